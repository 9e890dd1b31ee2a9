r"""The s4-starter recipe: the RAFT-DVC s4 arm trained from scratch on 2 CPU cores, in two phases (docs/training.md).

  python train.py --config=configs/s4_starter.py:translation --workdir=runs/s4_translation
  python train.py --config=configs/s4_starter.py:mix --workdir=runs/s4_mix --config.init_from=runs/s4_translation
  python train.py --config=configs/s4_starter.py:gpu --workdir=runs/s4_gpu   # on one GPU, from s4-starter
  python tools/train_gpu.py --minutes=7     # the same, its schedule sized to the minutes given

Differs from RAFT-DVC's recipe (configs/raftdvc.py) where a small budget needs it:
- an auxiliary correlation loss (train.loss.corr_weight) that teaches the encoder to match beads from the
  first steps;
- a curriculum. Phase 'translation': clean translations of 2-5 voxels (0.5-1.25 feature cells of this arm),
  which the update block learns to read from the correlation within a few hundred steps. Phase 'mix',
  started from the first phase's best weights: translation, rotation, affine, quadratic and smooth fields
  over a 0.25-4 voxel band, bead radii 1.5-3.5. Started on the mix directly, the network stayed at the
  no-motion EPE for 900 steps;
- 32^3 crops of fresh pairs at batch 2 and 6 training iterations, so a step takes ~1.3 s on 2 cores.
Phase 'gpu' continues the mix on one GPU: 64^3 crops (so the weights see whole 64^3 volumes, not only
32^3 tiles), batch 16, bf16 convolutions, data made in 12 spawned processes; tools/train_gpu.py sizes its
schedule to the minutes it is given.
"""

from raftdvc_jax.train.defaults import base_config

PHASES = ('translation', 'mix', 'gpu')


def get_config(phase: str = 'translation'):
  if phase not in PHASES:
    raise ValueError(f'unknown phase {phase!r}; use configs/s4_starter.py:PHASE with PHASE one of {", ".join(PHASES)}')
  c = base_config('s4', 'r2_32')
  c.model.iters = 6
  c.data.synthetic.update(size=32, particle_radius=2.0, density=4.8, disp_min=2.0, disp_max=5.0,
                          deformation='translation')
  c.data.train_size = 0
  c.data.val_size = 16
  c.data.num_workers = 1
  c.train.num_steps = 3000
  c.train.batch_size = 2
  c.train.lr = 4e-4
  c.train.schedule.pct_start = 0.05
  c.train.loss.corr_weight = 1.0
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.train.seed = 0
  if phase in ('mix', 'gpu'):
    c.data.synthetic.update(particle_radius=2.5, radius_jitter=1.0, density=2.4, disp_min=0.25, disp_max=4.0,
                            deformation='translation:0.15,rotation:0.2,affine:0.2,quadratic:0.15,smooth:0.3')
    c.train.num_steps = 2400
    c.train.lr = 3e-4
    c.train.seed = 1
  if phase == 'gpu':
    c.init_from = 's4-starter'
    c.data.synthetic.size = 64
    c.data.update(num_workers=12, processes=True, prefetch=4)
    c.train.update(batch_size=16, lr=2e-4, compute_dtype='bfloat16', seed=2, log_every=10)
  return c
