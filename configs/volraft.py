r"""VolRAFT (volraft_config_120: 1/8 encoder, ConvGRU, 4 levels of radius 3) with its upstream training recipe.

  python train.py --config=configs/volraft.py --workdir=runs/volraft

Recipe (RAFTDVC_REFERENCE.md 3.2): AdamW, weight decay 5e-5, gradient clip 1.0; CyclicLR triangular2 between
2e-5 and 2e-4 (500 epochs up, 1500 down) stepped once per epoch of 32 steps (`schedule.steps_per_epoch`);
10,000 epochs = 320,000 steps of batch 18; sequence loss gamma 0.8 averaged over components with |gt| < 24
(VolRAFT's batch-cross mask broadcast is a bug and is not reproduced); no augmentation; validation every
20 epochs, checkpoints every 100. VolRAFT trained on 60x80x80 micro-CT patches with synthetic flows, which are
not public: this config uses synthetic bead pairs of that shape instead (point config.data.dir at your own
patches). The model keeps VolRAFT's quirks (x8 upsampling, H<->D sampler); --config.model.sampler=exact trains
the fixed sampler. The batch of 18 must split over the devices (use 16 or 24 on 8 GPUs). VolRAFT ran under fp16
autocast: --config.train.compute_dtype=bfloat16 is the equivalent here.
"""

import ml_collections

from raftdvc_jax.data import synthetic
from raftdvc_jax.train.defaults import base_config


def get_config():
  c = base_config('volraft_120', 'r4_64')
  c.data.synthetic = ml_collections.ConfigDict(
      synthetic.preset('r4_64', size=(60, 80, 80), disp_min=4.0, disp_max=12.0).to_dict())
  c.data.train_size = 0
  c.data.val_size = 36
  c.data.augment.flip_prob = 0.0
  c.data.augment.rot90_planes = ()
  c.train.num_steps = 320_000
  c.train.batch_size = 18
  c.train.lr = 2e-4  # the cycle's max_lr
  c.train.schedule = dict(name='cyclic', base_lr=2e-5, step_size_up=500, step_size_down=1500, mode='triangular2',
                          gamma=1.0, steps_per_epoch=32)
  c.train.loss.components = 'mean'
  c.train.loss.max_flow = 24.0
  c.train.eval_every = 640
  c.train.checkpoint_every = 3200
  c.train.val_batch_size = 18
  return c
