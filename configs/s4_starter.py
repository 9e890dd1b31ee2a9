r"""The s4-starter recipe: the RAFT-DVC s4 arm trained from scratch on 2 CPU cores (docs/training.md).

  python train.py --config=configs/s4_starter.py --workdir=runs/s4_starter

Differs from RAFT-DVC's recipe (configs/raftdvc.py) where a small budget needs it: an auxiliary correlation
loss (train.loss.corr_weight) that teaches the encoder to match beads from the first steps, 32^3 crops of
fresh pairs at batch 2, 6 training iterations, and a wider family mix (translation, rotation, affine,
quadratic, smooth) over a 0.25-4 voxel band.
"""

from raftdvc_jax.train.defaults import base_config


def get_config():
  c = base_config('s4', 'r2_32')
  c.model.iters = 6
  c.data.synthetic.update(size=32, particle_radius=2.0, density=4.8, disp_min=0.25, disp_max=4.0,
                          deformation='translation:0.2,rotation:0.2,affine:0.2,quadratic:0.2,smooth:0.2')
  c.data.train_size = 0
  c.data.val_size = 16
  c.data.num_workers = 1
  c.train.num_steps = 4000
  c.train.batch_size = 2
  c.train.lr = 4e-4
  c.train.schedule.pct_start = 0.05
  c.train.loss.corr_weight = 1.0
  c.train.log_every = 25
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.train.seed = 0
  return c
