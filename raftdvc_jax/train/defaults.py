"""The default training config (RAFT-DVC's arm recipe); configs/*.py start from it and change what differs."""

from __future__ import annotations

import ml_collections

from raftdvc_jax.data import synthetic
from raftdvc_jax.model.config import preset


def base_config(model: str = 's4', data: str = 'r4_64') -> ml_collections.ConfigDict:
  """RAFT-DVC's training recipe (github.com/zachtong/RAFT-DVC) for model preset `model` on synthetic `data`.

  AdamW lr 2e-4, weight decay 5e-5; OneCycle (20 % warm-up, cosine, div 25, final div 1e4) over 75k steps;
  clip 1.0; sequence loss gamma 0.8, L1 summed over components and averaged over voxels; effective batch 8;
  flips on every axis and rot90 in the plane of array axes (1, 2).
  """
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(preset(model).to_dict())

  c.data = ml_collections.ConfigDict()
  c.data.dir = ''               # a dataset directory (train/ and val/ splits); empty: synthetic pairs
  c.data.val_dir = ''           # validation directory when not <dir>/val
  c.data.synthetic = ml_collections.ConfigDict(synthetic.preset(data).to_dict())
  c.data.train_size = 0         # synthetic: 0 = a fresh pair every time; N = a fixed set of N pairs
  c.data.val_size = 16          # fixed validation samples; 0 = no validation
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.flip_prob = 0.5
  c.data.augment.rot90_planes = ((1, 2),)
  c.data.augment.crop = 0       # 0: none; N or (N0, N1, N2): random crop (needed for mixed-size data)
  c.data.num_workers = 4
  c.data.prefetch = 2
  c.data.processes = False      # load in spawned processes instead of threads (many-core hosts)

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 75_000
  c.train.batch_size = 8        # effective batch per optimizer step, over all devices and accumulation
  c.train.grad_accum = 1
  c.train.lr = 2e-4             # peak learning rate
  c.train.weight_decay = 5e-5
  c.train.clip_norm = 1.0
  c.train.schedule = ml_collections.ConfigDict(dict(
      name='onecycle', pct_start=0.2, anneal='cos', div_factor=25.0, final_div_factor=1e4, steps_per_epoch=1))
  # corr_weight > 0 adds correlation_loss (an auxiliary match loss on the features; 0 is RAFT-DVC's recipe).
  # match_warmup N: the first N steps train the feature encoder alone on correlation_loss (docs/training.md).
  c.train.loss = ml_collections.ConfigDict(dict(gamma=0.8, components='sum', max_flow=0.0, corr_weight=0.0,
                                                match_warmup=0))
  c.train.compute_dtype = 'float32'  # 'bfloat16': bf16 convolutions, float32 params and correlation
  c.train.remat = False              # recompute each iteration's activations in the backward pass
  c.train.correlation = 'allpairs'  # or 'local' (memory-light, same numbers); model/corr.py
  c.train.lookup = 'auto'            # formula reading the pyramid: auto, reference, separable, slab
  c.train.log_every = 50
  c.train.eval_every = 1250          # 5 RAFT-DVC epochs of 250 steps
  c.train.checkpoint_every = 1250
  c.train.keep_checkpoints = 3       # the last few, plus the best by validation EPE
  c.train.val_batch_size = 0         # 0: the micro-batch size
  c.train.seed = 42

  c.init_from = ''  # fine-tune from a .pth/.pt, a converted directory or a training run directory
  return c
