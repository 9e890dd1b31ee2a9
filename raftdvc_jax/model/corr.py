"""All-pairs correlation pyramid and its window lookup (RAFT's CorrBlock in 3D).

A lookup reads each pyramid level at `coords / 2**l + (a, b, c)` for integer offsets in [-r, r]^3, by
trilinear interpolation with zero padding (PyTorch's grid_sample with align_corners=True), where the
sampler convention (samplers.py) says which level axis each query axis reads. Output channel
`l * K^3 + a * K^2 + b * K + c` (K = 2r + 1, a/b/c the offsets along array axes 0/1/2), level 0 first.
`lookup_reference` below is the definition; corr_fast.py has the faster formulations, exact to float
rounding, that the model uses ('auto' picks one per level).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from raftdvc_jax.model import corr_fast, corr_local
from raftdvc_jax.model.layers import at_least_float32
from raftdvc_jax.model.samplers import SAMPLER_AXES, has_rescale, sample_positions, window_offsets

_HP = jax.lax.Precision.HIGHEST


def lookup_reference(level, centroid, radius: int, sampler: str):
  """The lookup as written: map_coordinates on the (2r+1)^3 points around each centroid, order 1, zeros out.

  level (B, N, S0, S1, S2), centroid (B, N, 3) in this level's voxels -> (B, N, K, K, K) in query-axis order.
  """
  perm, _ = SAMPLER_AXES[sampler]
  shape = level.shape[2:]
  d = window_offsets(radius)
  grid = jnp.stack(jnp.meshgrid(d, d, d, indexing='ij'), -1)  # (K, K, K, 3) offsets along query axes
  q = centroid[:, :, None, None, None, :] + grid
  pos = [sample_positions(q[..., perm[k]], k, shape, sampler) for k in range(3)]

  def one(vol, p0, p1, p2):
    return jax.scipy.ndimage.map_coordinates(vol, [p0, p1, p2], order=1, mode='constant', cval=0.0)

  return jax.vmap(jax.vmap(one))(level, *pos)


# lookup -> fn(level, centroid, radius, sampler): the formula that reads a pyramid level; 'auto' chooses between
# the fast exact ones per level.
LOOKUPS = {
    'reference': lookup_reference,
    'separable': corr_fast.lookup_separable,
    'slab': corr_fast.lookup_slab,
}
LOOKUP_CHOICES = ('auto', *LOOKUPS)
# The correlation itself (a question of memory): 'allpairs' stores the pyramid, 'local' only the features
# (corr_local.py, the same numbers); 'auto' lets the estimator choose by what fits (infer/memory.py).
CORRELATIONS = ('auto', 'allpairs', 'local')


def all_pairs(fmap0, fmap1):
  """corr[b, p, q] = <fmap0[b, p], fmap1[b, q]> / sqrt(C) in float32, as (B, N, X0, X1, X2) over targets q."""
  b, *spatial, c = fmap0.shape
  f0 = at_least_float32(fmap0.reshape(b, -1, c))
  f1 = at_least_float32(fmap1.reshape(b, -1, c))
  corr = jnp.einsum('bpc,bqc->bpq', f0, f1, precision=_HP) / jnp.sqrt(jnp.float32(c))
  return corr.reshape(b, f0.shape[1], *spatial)


def avg_pool2(x):
  """2x2x2 average pooling with stride 2 over the last three axes, flooring odd sizes like avg_pool3d."""
  *lead, s0, s1, s2 = x.shape
  x = x[..., :s0 // 2 * 2, :s1 // 2 * 2, :s2 // 2 * 2]
  x = x.reshape(*lead, s0 // 2, 2, s1 // 2, 2, s2 // 2, 2)
  return x.mean(axis=(-5, -3, -1))


def auto_lookup(shape: Sequence[int], radius: int, sampler: str) -> str:
  """The faster exact lookup for a level: 'separable' reads the whole level, 'slab' a block per query."""
  # tools/bench_lookup.py on CPU: 16^3 level r=4 slab 44/96 ms vs separable 96/153 ms forward/backward;
  # an 8^3 level separable 10 vs 15 ms. So slab wins once the level outgrows one (2r+2)^3 block.
  small = math.prod(shape) <= (2 * radius + 2) ** 3
  return 'separable' if small or has_rescale(shape, sampler) else 'slab'


def lookup_level(level, centroid, radius: int, sampler: str, lookup: str = 'auto'):
  """Samples one level (B, N, S0, S1, S2) around centroids (B, N, 3) -> (B, N, K, K, K) in query order."""
  shape = level.shape[2:]
  if min(shape) == 1:  # grid_sample's division by zero (S - 1 = 0): the whole level reads zeros
    k_win = 2 * radius + 1
    return jnp.zeros((*level.shape[:2], k_win, k_win, k_win), level.dtype)
  if lookup == 'auto':
    lookup = auto_lookup(shape, radius, sampler)
  return LOOKUPS[lookup](level, centroid, radius, sampler)


@flax.struct.dataclass
class AllPairsCorr:
  """The all-pairs correlation pyramid; call it on coords (B, X0, X1, X2, 3) for (B, X0, X1, X2, L*K^3)."""

  levels: tuple
  radius: int = flax.struct.field(pytree_node=False)
  sampler: str = flax.struct.field(pytree_node=False)
  lookup: str = flax.struct.field(pytree_node=False, default='auto')

  @classmethod
  def build(cls, fmap0, fmap1, num_levels: int, radius: int, sampler: str = 'exact', lookup: str = 'auto'):
    """Correlates (B, X0, X1, X2, C) feature maps and pools the targets num_levels - 1 times."""
    if sampler not in SAMPLER_AXES:
      raise ValueError(f'unknown sampler {sampler!r}; choose from {sorted(SAMPLER_AXES)}')
    if lookup not in LOOKUP_CHOICES:
      raise ValueError(f'unknown lookup {lookup!r}; choose from {LOOKUP_CHOICES}')
    levels = [all_pairs(fmap0, fmap1)]
    for _ in range(num_levels - 1):
      if min(levels[-1].shape[2:]) < 2:
        raise ValueError(f'feature grid {fmap0.shape[1:4]} is too small for {num_levels} pyramid levels')
      levels.append(avg_pool2(levels[-1]))
    return cls(tuple(levels), radius, sampler, lookup)

  def __call__(self, coords):
    b, *spatial, _ = coords.shape
    centroid = at_least_float32(coords.reshape(b, -1, 3))
    out = [lookup_level(level, centroid / 2**i, self.radius, self.sampler, self.lookup)
           for i, level in enumerate(self.levels)]
    out = jnp.stack(out, axis=2)  # (B, N, L, K, K, K)
    return out.reshape(b, *spatial, -1)


def pyramid_bytes(feature_shape: Sequence[int], num_levels: int, batch: int = 1) -> int:
  """Bytes of the float32 all-pairs pyramid for a feature grid (for memory planning)."""
  n = math.prod(feature_shape)
  total, shape = 0, list(feature_shape)
  for _ in range(num_levels):
    total += n * math.prod(shape)
    shape = [s // 2 for s in shape]
  return 4 * batch * total


def build(fmap0, fmap1, num_levels: int, radius: int, sampler: str = 'exact', correlation: str = 'allpairs',
          lookup: str = 'auto'):
  """The correlation of two feature maps: the all-pairs pyramid (AllPairsCorr, read by `lookup`), or
  'local' windows computed from the features (corr_local.LocalCorr, the same numbers, far less memory)."""
  if correlation == 'local':
    return corr_local.LocalCorr.build(fmap0, fmap1, num_levels, radius, sampler)
  if correlation != 'allpairs':
    raise ValueError(f"unknown correlation {correlation!r}; the network takes 'allpairs' or 'local' "
                     "('auto' is the estimator's choice by memory)")
  return AllPairsCorr.build(fmap0, fmap1, num_levels, radius, sampler, lookup)
