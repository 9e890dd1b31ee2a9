"""Fast formulations of the correlation lookup, exact to float rounding against corr.lookup_reference.

  separable   per-axis tent-weight matrices and three einsums over the whole level; no gather, so its
              backward is matmuls (XLA's gather backward is a slow scatter); works for every convention.
  slab        one contiguous (2r+2)^3 block per query (the offsets are integers, so all samples of a query
              share their fractional weights), then the same separable weights on the block; needs a
              convention without rescale on this level (always true for 'exact').
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from raftdvc_jax.model.samplers import SAMPLER_AXES, has_rescale, sample_positions, to_query_order, window_offsets

_HP = jax.lax.Precision.HIGHEST


def _tent(pos, nodes):
  """Linear-interpolation weight of integer `nodes` for positions `pos`: max(0, 1 - |pos - node|)."""
  return jnp.maximum(0.0, 1.0 - jnp.abs(pos[..., None] - nodes))


def _contract(block, w0, w1, w2):
  """sum_xyz w0[.., o0, x] w1[.., o1, y] w2[.., o2, z] block[.., x, y, z] -> (.., o0, o1, o2)."""
  t = jnp.einsum('...xyz,...cz->...xyc', block, w2, precision=_HP)
  t = jnp.einsum('...xyc,...by->...xbc', t, w1, precision=_HP)
  return jnp.einsum('...xbc,...ax->...abc', t, w0, precision=_HP)


def lookup_separable(level, centroid, radius, sampler):
  """Window lookup as three tent-weight contractions over the whole level (B, N, S0, S1, S2)."""
  perm, _ = SAMPLER_AXES[sampler]
  shape = level.shape[2:]
  d = window_offsets(radius)
  weights = []
  for k in range(3):
    pos = sample_positions(centroid[..., perm[k], None] + d, k, shape, sampler)  # (B, N, K)
    weights.append(_tent(pos, jnp.arange(shape[k], dtype=jnp.float32)))
  return to_query_order(_contract(level, *weights), sampler)


def lookup_slab(level, centroid, radius, sampler):
  """Window lookup on one (2r+2)^3 block per query; the level must not be rescaled by the convention."""
  perm, _ = SAMPLER_AXES[sampler]
  shape = level.shape[2:]
  if has_rescale(shape, sampler):
    raise ValueError(f"the 'slab' lookup cannot apply the {sampler!r} rescale on a level of shape {shape}")
  k_win = 2 * radius + 1
  size = [min(s, k_win + 1) for s in shape]
  first, starts = [], []
  for k in range(3):
    p0 = centroid[..., perm[k]] - radius  # the window's first sample along array axis k
    # Clip before the cast so far-away queries cannot overflow int32; the block then lies outside the
    # window's support and its weights are zero, as zero padding asks.
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
    weights.append(_tent(pos, nodes[..., None, :]))
  return to_query_order(_contract(block, *weights), sampler)
