"""Where a correlation lookup reads a pyramid level: the three grid_sample sampler conventions.

Output array axis k of a level of shape S reads query axis PERM[k], normalised by S[NORM[k]] - 1 and
unnormalised by S[k] - 1, the round trip grid_sample's callers make:
  exact       identity: vol[c0, c1, c2].
  raftdvc_v1  vol[c0, c2 (S1-1)/(S2-1), c1 (S2-1)/(S1-1)]: the W<->D swap of pre-fix RAFT-DVC.
  volraft     vol[c2 (S0-1)/(S2-1), c1 (S1-1)/(S0-1), c0 (S2-1)/(S1-1)]: VolRAFT's H<->D swap.
Old checkpoints were trained through their convention, so their weights only work when we reproduce it.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

SAMPLER_AXES = {  # sampler -> (PERM, NORM)
    'exact': ((0, 1, 2), (0, 1, 2)),
    'raftdvc_v1': ((0, 2, 1), (0, 2, 1)),
    'volraft': ((2, 1, 0), (2, 0, 1)),
}


def sample_positions(q, axis: int, shape: Sequence[int], sampler: str):
  """Array-index position along `axis` for query coordinates `q` (taken along query axis PERM[axis])."""
  _, norm = SAMPLER_AXES[sampler]
  n = 2.0 * q / jnp.float32(shape[norm[axis]] - 1) - 1.0
  return ((n + 1.0) / 2.0) * jnp.float32(shape[axis] - 1)


def has_rescale(shape: Sequence[int], sampler: str) -> bool:
  """Whether the convention stretches some axis of a level of this shape (true only for unequal sides)."""
  _, norm = SAMPLER_AXES[sampler]
  return any(shape[k] != shape[norm[k]] for k in range(3))


def window_offsets(radius: int):
  """The integer offsets -r..r of a lookup window, as float32."""
  return jnp.arange(-radius, radius + 1, dtype=jnp.float32)
