r"""RAFT-DVC arm s4 (encoder 1/4, 2 levels, radius 4) on 64^3 synthetic bead pairs, as RAFT-DVC trained it.

  python train.py --config=configs/s4.py --workdir=runs/s4

Recipe (RAFTDVC_REFERENCE.md 3.1): AdamW lr 2e-4, weight decay 5e-5; OneCycle over 75,000 steps (20 % warm-up,
cosine, div 25, final div 1e4); gradient clip 1.0; sequence loss gamma 0.8 (L1 summed over components, averaged
over voxels); effective batch 8; 12 iterations; random flips on every axis and rot90 in the plane of array axes
(1, 2); a fixed set of 2000 pairs of the r4_64 preset (regenerated on the fly from their seeds, never stored),
validation every 1250 steps (5 of RAFT-DVC's 250-step epochs). RAFT-DVC used fp16 autocast; add
--config.train.compute_dtype=bfloat16 on GPUs/TPUs for the same effect (float32 params and correlation), and
--config.train.remat=True when memory is short. Fresh pairs every step instead: --config.data.train_size=0.
"""

from raftdvc_jax.train.defaults import base_config


def get_config():
  c = base_config('s4', 'r4_64')
  c.data.train_size = 2000
  c.data.val_size = 64
  c.train.batch_size = 8
  c.train.grad_accum = 1
  return c
