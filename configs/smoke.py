r"""Smoke run: a small model on 24^3 synthetic pairs that learns visibly on 2 CPU cores in under 3 minutes.

  python train.py --config=configs/smoke.py --workdir=/tmp/raftdvc_smoke

It trains on a fixed set of 16 pairs without augmentation, so what it shows is the whole pipeline learning.
Measured (2 busy CPU cores, 176 s including ~25 s of compilation): train loss from 7.4 to about 4.2 and train
EPE from 2.1 to 1.1-1.3 voxels over the 80 steps, against 1.77 for predicting no motion on these pairs. A RAFT
network needs thousands of steps before it generalises: validation EPE only moves from 2.22 to 2.09 (no motion:
2.25) in a run this short. Running the command again resumes (or, when finished, says so);
--config.train.num_steps=200 trains on.
"""

from raftdvc_jax.train.defaults import base_config


def get_config():
  c = base_config('s4', 'r2_32')
  c.model.update(encoder_type='1/4', feature_dim=32, hidden_dim=32, context_dim=32, corr_levels=2,
                 corr_radius=3, iters=3)
  c.data.synthetic.update(size=24, particle_radius=2.0, density=4.8, disp_min=1.0, disp_max=3.0,
                          deformation='translation:0.5,affine:0.5')
  c.data.update(train_size=16, val_size=8, num_workers=2)
  c.data.augment.update(flip_prob=0.0, rot90_planes=())
  c.train.update(num_steps=80, batch_size=4, lr=1e-3, log_every=5, eval_every=40, checkpoint_every=40, seed=0)
  c.train.schedule.pct_start = 0.1
  return c
