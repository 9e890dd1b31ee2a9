r"""Smoke run: the RAFT-DVC s4 arm from scratch on fresh translation pairs, validated on 16 pairs it never sees.

  python train.py --config=configs/smoke.py --workdir=/tmp/raftdvc_smoke

The first phase of the s4-starter recipe (configs/s4_starter.py:translation) cut to ~5 minutes on 2 cores:
fresh 32^3 bead pairs every step (flips and rot90 on), translations of 2-5 voxels along the largest
component, batch 2, 4 training iterations, and the auxiliary correlation loss (train.loss.corr_weight).
The first 250 steps are a match warm-up (train.loss.match_warmup; docs/training.md): the feature encoder
alone learns to match beads, at ~0.2 s a step instead of ~1.1 s. Then the optimizer restarts and the whole
network trains for 180 steps under a OneCycle. Validation is 16 fixed pairs the run never trains on, so the
curve shows generalisation, not memorising; its first records (steps 125, 250) are the untrained update
block, at the no-motion EPE.
Measured on 2 cores (docs/training.md, "Smoke config"): from step 250 to 430 the validation EPE falls
48 % to 0.52x the EPE of predicting no motion (seed 0); 34 % to 0.66x with --config.train.seed=1, 37 % to
0.63x with seed 2; 3.3-4.7 minutes of training (3.5-5.0 for the command). Running the command again resumes (or, when finished, says
so); --config.train.num_steps=N trains on.
"""

from raftdvc_jax.train.defaults import base_config


def get_config():
  c = base_config('s4', 'r2_32')
  c.model.iters = 4
  c.data.synthetic.update(size=32, particle_radius=2.0, density=4.8, disp_min=2.0, disp_max=5.0,
                          deformation='translation')
  c.data.update(train_size=0, val_size=16, num_workers=1)
  c.train.update(num_steps=430, batch_size=2, lr=4e-4, log_every=25, eval_every=125, checkpoint_every=125,
                 seed=0)
  c.train.schedule.pct_start = 0.05
  c.train.loss.update(corr_weight=1.0, match_warmup=250)
  return c
