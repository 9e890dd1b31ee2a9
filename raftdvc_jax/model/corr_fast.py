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

from raftdvc_jax.model import lookup_ops as ops
from raftdvc_jax.model.samplers import has_rescale


def lookup_separable(level, centroid, radius, sampler):
  """Window lookup as three tent-weight contractions over the whole level (B, N, S0, S1, S2)."""
  shape = level.shape[2:]
  pos = ops.window_positions(centroid, shape, radius, sampler)  # (B, N, K) per axis
  weights = [ops.tent(pos[k], jnp.arange(shape[k], dtype=jnp.float32)) for k in range(3)]
  return ops.query_order(ops.contract(level, *weights), sampler)


def lookup_slab(level, centroid, radius, sampler):
  """Window lookup on one (2r+2)^3 block per query; the level must not be rescaled by the convention."""
  shape = level.shape[2:]
  if has_rescale(shape, sampler):
    raise ValueError(f"the 'slab' lookup cannot apply the {sampler!r} rescale on a level of shape {shape}")
  size = [min(s, 2 * radius + 2) for s in shape]
  pos = ops.window_positions(centroid, shape, radius, sampler)  # every sample of a query shares its fraction
  starts = [ops.block_starts(pos[k][..., 0], shape[k], size[k]) for k in range(3)]

  def one(vol, s0, s1, s2):
    return jax.lax.dynamic_slice(vol, (s0, s1, s2), size)

  block = jax.vmap(jax.vmap(one))(level, *starts)  # (B, N, m0, m1, m2)
  return ops.query_order(ops.contract(block, *ops.block_weights(pos, starts, size)), sampler)
