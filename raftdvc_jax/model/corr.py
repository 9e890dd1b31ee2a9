"""All-pairs correlation pyramid and its lookup under the three sampler conventions.

A lookup reads each pyramid level at `coords / 2**l + (a, b, c)` for integer offsets in [-r, r]^3, by
trilinear interpolation with zero padding (PyTorch's grid_sample with align_corners=True). Output channel
`l * K^3 + a * K^2 + b * K + c` (K = 2r + 1, a/b/c the offsets along array axes 0/1/2), level 0 first.

Sampler conventions. Output array axis k of a level of shape S reads query axis PERM[k], normalised by
S[NORM[k]] - 1 and unnormalised by S[k] - 1, the round trip grid_sample's callers make:
  exact       identity: vol[c0, c1, c2].
  raftdvc_v1  vol[c0, c2 (S1-1)/(S2-1), c1 (S2-1)/(S1-1)]: the W<->D swap of pre-fix RAFT-DVC.
  volraft     vol[c2 (S0-1)/(S2-1), c1 (S1-1)/(S0-1), c0 (S2-1)/(S1-1)]: VolRAFT's H<->D swap.
A level with a side of 1 divides by zero there and grid_sample then reads zeros; so do we.

Lookup formulations, all exact to float rounding:
  reference   vmapped map_coordinates on the (2r+1)^3 points; plain, for tests.
  separable   per-axis tent-weight matrices and three einsums over the whole level; no gather, so its
              backward is matmuls; works for every convention.
  slab        one contiguous (2r+2)^3 block per query (the offsets are integers, so all samples share
              their fractional weights), then the same separable weights on the block; needs a convention
              without rescale on this level (always true for 'exact').
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

SAMPLER_AXES = {  # sampler -> (PERM, NORM)
    'exact': ((0, 1, 2), (0, 1, 2)),
    'raftdvc_v1': ((0, 2, 1), (0, 2, 1)),
    'volraft': ((2, 1, 0), (2, 0, 1)),
}
METHODS = ('auto', 'reference', 'separable', 'slab')
_HP = jax.lax.Precision.HIGHEST


def all_pairs(fmap0, fmap1):
  """corr[b, p, q] = <fmap0[b, p], fmap1[b, q]> / sqrt(C) in float32, as (B, N, X0, X1, X2) over targets q."""
  b, *spatial, c = fmap0.shape
  f0 = fmap0.reshape(b, -1, c).astype(jnp.float32)
  f1 = fmap1.reshape(b, -1, c).astype(jnp.float32)
  corr = jnp.einsum('bpc,bqc->bpq', f0, f1, precision=_HP) / jnp.sqrt(jnp.float32(c))
  return corr.reshape(b, f0.shape[1], *spatial)


def avg_pool2(x):
  """2x2x2 average pooling with stride 2 over the last three axes, flooring odd sizes like avg_pool3d."""
  *lead, s0, s1, s2 = x.shape
  x = x[..., :s0 // 2 * 2, :s1 // 2 * 2, :s2 // 2 * 2]
  x = x.reshape(*lead, s0 // 2, 2, s1 // 2, 2, s2 // 2, 2)
  return x.mean(axis=(-5, -3, -1))


def sample_positions(q, axis: int, shape: Sequence[int], sampler: str):
  """Array-index position along `axis` for query coordinates `q` (taken along query axis PERM[axis])."""
  _, norm = SAMPLER_AXES[sampler]
  n = 2.0 * q / jnp.float32(shape[norm[axis]] - 1) - 1.0
  return ((n + 1.0) / 2.0) * jnp.float32(shape[axis] - 1)


def _has_rescale(shape, sampler):
  _, norm = SAMPLER_AXES[sampler]
  return any(shape[k] != shape[norm[k]] for k in range(3))


def _tent(pos, nodes):
  """Linear-interpolation weight of integer `nodes` for positions `pos`: max(0, 1 - |pos - node|)."""
  return jnp.maximum(0.0, 1.0 - jnp.abs(pos[..., None] - nodes))


def _contract(block, w0, w1, w2):
  """sum_xyz w0[.., o0, x] w1[.., o1, y] w2[.., o2, z] block[.., x, y, z] -> (.., o0, o1, o2)."""
  t = jnp.einsum('...xyz,...cz->...xyc', block, w2, precision=_HP)
  t = jnp.einsum('...xyc,...by->...xbc', t, w1, precision=_HP)
  return jnp.einsum('...xbc,...ax->...abc', t, w0, precision=_HP)


def _offsets(radius):
  return jnp.arange(-radius, radius + 1, dtype=jnp.float32)


def _lookup_reference(level, centroid, radius, sampler):
  perm, _ = SAMPLER_AXES[sampler]
  shape = level.shape[2:]
  d = _offsets(radius)
  grid = jnp.stack(jnp.meshgrid(d, d, d, indexing='ij'), -1)  # (K, K, K, 3) offsets along query axes
  q = centroid[:, :, None, None, None, :] + grid
  pos = [sample_positions(q[..., perm[k]], k, shape, sampler) for k in range(3)]

  def one(vol, p0, p1, p2):
    return jax.scipy.ndimage.map_coordinates(vol, [p0, p1, p2], order=1, mode='constant', cval=0.0)

  return jax.vmap(jax.vmap(one))(level, *pos)  # (B, N, K, K, K), already in query-axis order


def _lookup_separable(level, centroid, radius, sampler):
  perm, _ = SAMPLER_AXES[sampler]
  shape = level.shape[2:]
  d = _offsets(radius)
  weights = []
  for k in range(3):
    pos = sample_positions(centroid[..., perm[k], None] + d, k, shape, sampler)  # (B, N, K)
    weights.append(_tent(pos, jnp.arange(shape[k], dtype=jnp.float32)))
  out = _contract(level, *weights)  # axis k of the window runs along query axis perm[k]
  return out.transpose(0, 1, *(2 + perm.index(j) for j in range(3)))


def _lookup_slab(level, centroid, radius, sampler):
  perm, _ = SAMPLER_AXES[sampler]
  shape = level.shape[2:]
  k_win = 2 * radius + 1
  size = [min(s, k_win + 1) for s in shape]
  first, starts = [], []
  for k in range(3):
    p0 = centroid[..., perm[k]] - radius  # the window's first sample along array axis k
    lo = jnp.floor(jnp.clip(p0, -k_win - 1.0, shape[k] + 1.0)).astype(jnp.int32)
    first.append(p0)
    starts.append(jnp.clip(lo, 0, shape[k] - size[k]))

  def one(vol, s0, s1, s2):
    return jax.lax.dynamic_slice(vol, (s0, s1, s2), size)

  block = jax.vmap(jax.vmap(one))(level, *starts)  # (B, N, m0, m1, m2)
  steps = jnp.arange(k_win, dtype=jnp.float32)
  weights = []
  for k in range(3):
    nodes = starts[k][..., None].astype(jnp.float32) + jnp.arange(size[k], dtype=jnp.float32)
    pos = first[k][..., None] + steps  # (B, N, K): every sample of a query shares its fraction
    weights.append(jnp.maximum(0.0, 1.0 - jnp.abs(pos[..., None] - nodes[..., None, :])))
  out = _contract(block, *weights)
  return out.transpose(0, 1, *(2 + perm.index(j) for j in range(3)))


_LOOKUPS = {'reference': _lookup_reference, 'separable': _lookup_separable, 'slab': _lookup_slab}


def lookup_level(level, centroid, radius: int, sampler: str, method: str = 'auto'):
  """Samples one level (B, N, S0, S1, S2) around centroids (B, N, 3) -> (B, N, K, K, K) in query order."""
  shape = level.shape[2:]
  if min(shape) == 1:  # grid_sample's division by zero: the whole level reads zeros
    k_win = 2 * radius + 1
    return jnp.zeros((*level.shape[:2], k_win, k_win, k_win), level.dtype)
  if method == 'auto':
    # 'separable' reads the whole level, 'slab' a (2r+2)^3 block per query (tools/bench_lookup.py: on CPU,
    # 16^3 level r=4 slab 44/96 ms vs separable 96/153 ms forward/backward; 8^3 level separable 10 vs 15).
    small = math.prod(shape) <= (2 * radius + 2) ** 3
    method = 'separable' if small or _has_rescale(shape, sampler) else 'slab'
  if method == 'slab' and _has_rescale(shape, sampler):
    raise ValueError(f"the 'slab' lookup cannot apply the {sampler!r} rescale on a level of shape {shape}")
  return _LOOKUPS[method](level, centroid, radius, sampler)


@flax.struct.dataclass
class AllPairsCorr:
  """The all-pairs correlation pyramid; call it on coords (B, X0, X1, X2, 3) for (B, X0, X1, X2, L*K^3)."""

  levels: tuple
  radius: int = flax.struct.field(pytree_node=False)
  sampler: str = flax.struct.field(pytree_node=False)
  method: str = flax.struct.field(pytree_node=False, default='auto')

  @classmethod
  def build(cls, fmap0, fmap1, num_levels: int, radius: int, sampler: str = 'exact', method: str = 'auto'):
    """Correlates (B, X0, X1, X2, C) feature maps and pools the targets num_levels - 1 times."""
    if sampler not in SAMPLER_AXES:
      raise ValueError(f'unknown sampler {sampler!r}; choose from {sorted(SAMPLER_AXES)}')
    if method not in METHODS:
      raise ValueError(f'unknown lookup method {method!r}; choose from {METHODS}')
    levels = [all_pairs(fmap0, fmap1)]
    for _ in range(num_levels - 1):
      if min(levels[-1].shape[2:]) < 2:
        raise ValueError(f'feature grid {fmap0.shape[1:4]} is too small for {num_levels} pyramid levels')
      levels.append(avg_pool2(levels[-1]))
    return cls(tuple(levels), radius, sampler, method)

  def __call__(self, coords):
    b, *spatial, _ = coords.shape
    centroid = coords.reshape(b, -1, 3).astype(jnp.float32)
    out = [lookup_level(level, centroid / 2**i, self.radius, self.sampler, self.method)
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
