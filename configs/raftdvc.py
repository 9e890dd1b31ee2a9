r"""The RAFT-DVC arms (2 levels of radius 4, 12 iterations) on synthetic bead pairs, as RAFT-DVC trained them.

  python train.py --config=configs/raftdvc.py:s4 --workdir=runs/s4     # encoder 1/4, 64^3 pairs (r4_64)
  python train.py --config=configs/raftdvc.py:s2 --workdir=runs/s2     # encoder 1/2, 32^3 pairs (r2_32)
  python train.py --config=configs/raftdvc.py:s8 --workdir=runs/s8     # encoder 1/8, 128^3 pairs (r8_128)

The recipe is RAFT-DVC's (github.com/zachtong/RAFT-DVC, its training script), set out field by field in
raftdvc_jax/train/defaults.py: AdamW lr 2e-4, weight decay 5e-5; OneCycle over 75,000 steps; clip 1.0; sequence
loss gamma 0.8; effective batch 8 (s8: micro-batch 4 x 2 accumulation steps); flips and rot90; a fixed set of
2000 pairs of the arm's preset (regenerated from their seeds, never stored); validation every 1250 steps.
RAFT-DVC used fp16 autocast: --config.train.compute_dtype=bfloat16 is the equivalent on GPUs/TPUs, and
--config.train.remat=True saves memory. Fresh pairs every step instead: --config.data.train_size=0.
"""

from raftdvc_jax.train.defaults import base_config

# arm -> (synthetic data preset, validation samples, gradient accumulation steps)
ARMS = {'s2': ('r2_32', 64, 1), 's4': ('r4_64', 64, 1), 's8': ('r8_128', 32, 2)}


def get_config(arm: str = 's4'):
  if arm not in ARMS:
    raise ValueError(f'unknown arm {arm!r}; use configs/raftdvc.py:ARM with ARM one of {", ".join(ARMS)}')
  data, val_size, accum = ARMS[arm]
  c = base_config(arm, data)
  c.data.train_size = 2000
  c.data.val_size = val_size
  c.train.batch_size = 8
  c.train.grad_accum = accum
  return c
