r"""The s8-starter recipe: the RAFT-DVC s8 arm (encoder 1/8) trained from scratch on 2 CPU cores for reach.

  python train.py --config=configs/s8_starter.py:translation --workdir=runs/s8_translation
  python train.py --config=configs/s8_starter.py:mix --workdir=runs/s8_mix --config.init_from=runs/s8_translation

The arm that measures large moves (up to ~24 voxels), on 64^3 crops, so that coarse-to-fine
(`--coarse_checkpoint s8-starter --checkpoint s4-starter`) leaves the s4 arm only the residual. A step of
s8 at 64^3 costs about what s4 costs at 32^3 (tools/bench_train.py), so 64^3 is within a CPU budget here.
Like s4-starter (configs/s4_starter.py): the auxiliary correlation loss, a match warm-up
(train.loss.match_warmup) in which the feature encoder alone learns to match, and a curriculum:
- 'translation': rigid translations whose largest component is 2-24 voxels (0.25-3 feature cells);
- 'mix': translation, rotation, affine and smooth fields over a 1-24 voxel band, bead radii 1.5-4.
Fresh pairs every step at batch 2 and 6 training iterations; 16 fixed validation pairs never trained on.
"""

from raftdvc_jax.train.defaults import base_config

PHASES = ('translation', 'mix')


def get_config(phase: str = 'translation'):
  if phase not in PHASES:
    raise ValueError(f'unknown phase {phase!r}; use configs/s8_starter.py:PHASE with PHASE one of {", ".join(PHASES)}')
  c = base_config('s8', 'r8_128')
  c.model.iters = 6
  c.data.synthetic.update(size=64, particle_radius=2.5, radius_jitter=1.0, density=2.4, disp_min=2.0,
                          disp_max=24.0, deformation='translation')
  c.data.update(train_size=0, val_size=16, num_workers=1)
  c.train.update(num_steps=1500, batch_size=2, grad_accum=1, lr=4e-4, log_every=20, eval_every=150,
                 checkpoint_every=150, seed=0)
  c.train.schedule.pct_start = 0.05
  c.train.loss.update(corr_weight=1.0, match_warmup=300)
  if phase == 'mix':
    c.data.synthetic.update(particle_radius=2.75, radius_jitter=1.25, disp_min=1.0,
                            deformation='translation:0.35,rotation:0.2,affine:0.25,smooth:0.2')
    c.train.update(num_steps=2000, lr=3e-4, seed=1)
    c.train.loss.match_warmup = 0
  return c
