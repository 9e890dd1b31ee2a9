r"""Smoke run: the RAFT-DVC s4 arm from scratch on fresh translation pairs, validated on 16 pairs it never sees.

  python train.py --config=configs/smoke.py --workdir=/tmp/raftdvc_smoke

The first phase of the s4-starter recipe (configs/s4_starter.py:translation) cut to 400 steps: fresh 32^3
bead pairs every step (flips and rot90 on), translations of 2-5 voxels along the largest component, batch
2, 4 training iterations, and the auxiliary correlation loss (train.loss.corr_weight; docs/training.md)
that teaches the encoder to match beads from the first steps. Validation is 16 fixed pairs the run never
trains on, so the curve shows generalisation, not memorising. Measured on 2 cores: 7.6 min for the
command; validation EPE 4.495 (step 100) -> 2.934 (step 400) against 4.445 for predicting no motion (0.66x,
a 35 % fall); with --config.train.seed=1, 4.072 -> 3.075 against 4.092 (0.75x). The network breaks away
from no motion only after ~200-300 steps, and shorter variants stayed at no motion (docs/training.md,
"Smoke config"). Running the command again resumes (or, when finished, says so); --config.train.num_steps=N
trains on.
"""

from raftdvc_jax.train.defaults import base_config


def get_config():
  c = base_config('s4', 'r2_32')
  c.model.iters = 4
  c.data.synthetic.update(size=32, particle_radius=2.0, density=4.8, disp_min=2.0, disp_max=5.0,
                          deformation='translation')
  c.data.update(train_size=0, val_size=16, num_workers=1)
  c.train.update(num_steps=400, batch_size=2, lr=4e-4, log_every=20, eval_every=100, checkpoint_every=100, seed=0)
  c.train.schedule.pct_start = 0.05
  c.train.loss.corr_weight = 1.0
  return c
