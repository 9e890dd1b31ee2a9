"""The pieces every correlation lookup is made of (corr.py, corr_fast.py, corr_local.py), written once.

A window of (2r+1)^3 samples around a centroid reads, per axis, positions that share one fractional part,
so each lookup is: the sample positions per axis (window_positions), the block of nodes they touch
(block_starts), tent (linear-interpolation) weights of those nodes (tent), three contractions of a block
with the weights (contract), and the transpose into query-axis order (query_order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from raftdvc_jax.model.samplers import SAMPLER_AXES, sample_positions, window_offsets

HIGHEST = jax.lax.Precision.HIGHEST  # float32 products on every backend: lookups feed the parity tests


def window_positions(centroid, shape, radius: int, sampler: str) -> list:
  """Sample positions (.., K) along each level axis k for centroids (.., 3), increasing along K."""
  perm, _ = SAMPLER_AXES[sampler]
  d = window_offsets(radius)
  return [sample_positions(centroid[..., perm[k], None] + d, k, shape, sampler) for k in range(3)]


def block_starts(first, length: int, size: int):
  """First node of the `size`-node block, clipped into an axis of `length` nodes, that holds samples from
  position `first` on."""
  # Clip before the cast so far-away queries cannot overflow int32; the block then lies outside the
  # window's support and its weights are zero, as zero padding asks.
  lo = jnp.floor(jnp.clip(first, -size - 1.0, length + 1.0)).astype(jnp.int32)
  return jnp.clip(lo, 0, length - size)


def tent(pos, nodes):
  """Linear-interpolation weight of integer `nodes` for positions `pos`: max(0, 1 - |pos - node|)."""
  return jnp.maximum(0.0, 1.0 - jnp.abs(pos[..., None] - nodes))


def block_weights(positions, origins, sizes) -> list:
  """Tent weights (.., K, M_k) of the M_k nodes of a block starting at `origins` for each axis's positions."""
  nodes = [origins[k][..., None, None].astype(jnp.float32) + jnp.arange(sizes[k], dtype=jnp.float32)
           for k in range(3)]
  return [tent(positions[k], nodes[k]) for k in range(3)]


def contract(block, w0, w1, w2):
  """sum_xyz w0[.., o0, x] w1[.., o1, y] w2[.., o2, z] block[.., x, y, z] -> (.., o0, o1, o2)."""
  t = jnp.einsum('...xyz,...cz->...xyc', block, w2, precision=HIGHEST)
  t = jnp.einsum('...xyc,...by->...xbc', t, w1, precision=HIGHEST)
  return jnp.einsum('...xbc,...ax->...abc', t, w0, precision=HIGHEST)


def query_order(window, sampler: str):
  """Transposes windows (.., K, K, K) whose axis k runs along query axis PERM[k] into query-axis order."""
  perm, _ = SAMPLER_AXES[sampler]
  lead = window.ndim - 3
  return window.transpose(*range(lead), *(lead + perm.index(j) for j in range(3)))
