"""Memory-light exact correlation: each lookup window computed from the feature maps, chunk by chunk.

All-pairs correlation stores N^2 floats per level (a 48^3 feature grid: 49 GB for level 0). The lookup only
ever reads a (2r+1)^3 window per query, and everything in it is linear in the target features:
  * level l of the pyramid is the all-pairs correlation with the l-times 2x2x2-average-pooled target
    features, since average pooling is linear (RAFT-DVC's corr_otf.py relies on the same identity);
  * a trilinear sample of a correlation row is the correlation with the trilinearly sampled features.
So a window is the query's feature vector dotted with the block of pooled target features its samples
touch, interpolated with the same tent weights as the all-pairs lookup (corr_fast.py). The queries go in
TILE^3 tiles: a tile gathers one block covering all its windows (plus `margin` nodes of slack for flow
variation) and correlates with it as one matmul, which XLA runs far faster than a gather per query; a tile
whose windows do not fit (a flow discontinuity, a wild initial flow) takes the exact per-query path under
lax.cond. The tiles run `chunk` queries per lax.map step, each step rematerialised in the backward pass,
so memory is bounded by the chunk and not by N^2. docs/performance.md has the measurements.

Sampler conventions, channel order and the singleton-level zeros are those of corr.py / samplers.py. Where
a convention rescales an axis (legacy conventions on non-cubic levels) the window's samples are spaced by
the rescale factor and the block grows to cover them.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from raftdvc_jax.model import lookup_ops as ops
from raftdvc_jax.model.samplers import SAMPLER_AXES

_HP = ops.HIGHEST
F32 = 4
# Queries go in TILE^3 tiles that share one block of target features and correlate with it as a matmul.
TILE = 4
# Nodes of slack per axis in a tile's block beyond its windows' geometric extent: flow variation the tile
# absorbs before falling back to per-query blocks.
DEFAULT_MARGIN = 2
# Queries per lax.map step (whole tiles): the working set is about chunk * (M^3 + K^3 + M^2 K) floats plus
# chunk / TILE^3 blocks of M^3 * C (M = 2r + 1 + TILE + margin).
DEFAULT_CHUNK = 512


def pool_features(fmap):
  """2x2x2 average pooling with stride 2 over the spatial axes of (B, S0, S1, S2, C), flooring odd sizes."""
  b, s0, s1, s2, c = fmap.shape
  x = fmap[:, :s0 // 2 * 2, :s1 // 2 * 2, :s2 // 2 * 2]
  x = x.reshape(b, s0 // 2, 2, s1 // 2, 2, s2 // 2, 2, c)
  return x.mean(axis=(2, 4, 6))


def block_sizes(shape: Sequence[int], radius: int, sampler: str) -> tuple[int, int, int]:
  """Side of the feature block a window touches along each axis of a level of this shape."""
  _, norm = SAMPLER_AXES[sampler]
  sizes = []
  for k in range(3):
    scale = (shape[k] - 1) / (shape[norm[k]] - 1)
    # 2r+1 samples spaced `scale` apart touch at most ceil(2r scale) + 2 nodes; one more under a rescale,
    # where the positions are products and may round across a node.
    m = 2 * radius + 2 if scale == 1 else math.ceil(2 * radius * scale) + 3
    sizes.append(min(shape[k], m))
  return tuple(sizes)


def _window_one(level, b, centroid, f0, radius: int, sampler: str):
  """One query's window: level (B, S0, S1, S2, C), b (), centroid (3,), f0 (C,) -> (K, K, K), axis k = level axis k."""
  shape = level.shape[1:4]
  size = block_sizes(shape, radius, sampler)
  pos = ops.window_positions(centroid, shape, radius, sampler)
  starts = [ops.block_starts(pos[k][..., 0], shape[k], size[k]) for k in range(3)]
  block = jax.lax.dynamic_slice(level, (b, *starts, 0), (1, *size, level.shape[-1]))[0]
  corr = jnp.einsum('xyzc,c->xyz', block, f0, precision=_HP)
  return ops.contract(corr, *ops.block_weights(pos, starts, size))


def _tile_origins(pos, shape, size, tile):
  """First node of each tile's shared block per axis, (G, 1) each, and whether each tile's windows fit it."""
  origins, fits = [], []
  for k in range(3):
    starts = ops.block_starts(pos[k][..., 0], shape[k], size[k])  # (G, T)
    origin = jnp.clip(starts.min(axis=1), 0, shape[k] - tile[k])[:, None]
    fits.append(jnp.all((starts >= origin) & (starts + size[k] <= origin + tile[k]), axis=1))
    origins.append(origin)
  return origins, fits[0] & fits[1] & fits[2]


def _window_tiles(level, b, centroid, f0, radius: int, sampler: str, tile):
  """Windows of query tiles sharing one block each: b (G,), centroid (G, T, 3), f0 (G, T, C).

  Returns the windows (G, T, K, K, K) and whether every window lay inside its tile's block (else they are
  wrong and the caller must use the per-query path).
  """
  shape = level.shape[1:4]
  pos = ops.window_positions(centroid, shape, radius, sampler)
  origins, fits = _tile_origins(pos, shape, block_sizes(shape, radius, sampler), tile)

  def one(bb, o0, o1, o2):
    return jax.lax.dynamic_slice(level, (bb, o0, o1, o2, 0), (1, *tile, level.shape[-1]))[0]

  block = jax.vmap(one)(b, *(o[:, 0] for o in origins))  # (G, M0, M1, M2, C)
  # A matmul per tile whose output puts the tile's queries last: other orders make XLA-CPU fuse a transpose
  # into the gather, which ran 2-3x slower.
  corr = jnp.einsum('gxyzc,gtc->gxyzt', block, f0, precision=_HP).transpose(0, 4, 1, 2, 3)
  return ops.contract(corr, *ops.block_weights(pos, origins, tile)), jnp.all(fits)


def tile_block_sizes(shape: Sequence[int], radius: int, sampler: str, margin: int,
                     level: int = 0) -> tuple[int, int, int]:
  """Side of the block a TILE^3 tile of queries shares on pyramid `level`: its windows plus `margin` nodes."""
  _, norm = SAMPLER_AXES[sampler]
  size = block_sizes(shape, radius, sampler)
  spread = [(TILE - 1) / 2**level * (shape[k] - 1) / (shape[norm[k]] - 1) for k in range(3)]
  return tuple(min(shape[k], size[k] + math.ceil(spread[k]) + margin) for k in range(3))


def _tiles(x, b, spatial):
  """(B, X0, X1, X2, D) padded by edge copies to multiples of TILE -> (B * tiles, TILE^3, D)."""
  pads = [(0, -n % TILE) for n in spatial]
  x = jnp.pad(x, [(0, 0), *pads, (0, 0)], mode='edge')
  g = [n // TILE for n in x.shape[1:4]]
  x = x.reshape(b, g[0], TILE, g[1], TILE, g[2], TILE, -1).transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b * math.prod(g), TILE**3, -1)


def _untile(x, b, spatial):
  """Inverse of _tiles for (B * tiles, TILE^3, D), cropping the padding."""
  g = [-(-n // TILE) for n in spatial]
  x = x.reshape(b, *g, TILE, TILE, TILE, -1).transpose(0, 1, 4, 2, 5, 3, 6, 7)
  x = x.reshape(b, *(n * TILE for n in g), -1)
  return x[:, :spatial[0], :spatial[1], :spatial[2]]


@flax.struct.dataclass
class LocalCorr:
  """Correlation lookups straight from the features; call it on coords (B, X0, X1, X2, 3) for L*K^3 channels."""

  fmap0: jax.Array  # (B, X0, X1, X2, C) query features
  levels: tuple     # target features pooled 0..L-1 times, each (B, S0, S1, S2, C)
  radius: int = flax.struct.field(pytree_node=False)
  sampler: str = flax.struct.field(pytree_node=False)
  chunk: int = flax.struct.field(pytree_node=False, default=DEFAULT_CHUNK)
  margin: int = flax.struct.field(pytree_node=False, default=DEFAULT_MARGIN)

  @classmethod
  def build(cls, fmap0, fmap1, num_levels: int, radius: int, sampler: str = 'exact',
            chunk: int = DEFAULT_CHUNK, margin: int = DEFAULT_MARGIN):
    """Pools the target features num_levels - 1 times; no correlation is computed until the lookup."""
    if sampler not in SAMPLER_AXES:
      raise ValueError(f'unknown sampler {sampler!r}; choose from {sorted(SAMPLER_AXES)}')
    if chunk < 1 or margin < 0:
      raise ValueError(f'the query chunk must be positive and the margin non-negative, not {chunk}, {margin}')
    levels = [fmap1.astype(jnp.float32)]
    for _ in range(num_levels - 1):
      if min(levels[-1].shape[1:4]) < 2:
        raise ValueError(f'feature grid {fmap0.shape[1:4]} is too small for {num_levels} pyramid levels')
      levels.append(pool_features(levels[-1]))
    return cls(fmap0.astype(jnp.float32), tuple(levels), radius, sampler, chunk, margin)

  def __call__(self, coords):
    b, *spatial, _ = coords.shape
    k_win = 2 * self.radius + 1
    live = [i for i, lv in enumerate(self.levels) if min(lv.shape[1:4]) > 1]
    # Queries go in TILE^3 tiles (edge copies pad the grid, so padding adds no spread), `per_step` tiles
    # per lax.map step; the steps are padded with copies of the last tile.
    f0 = _tiles(self.fmap0, b, spatial)
    centroid = _tiles(coords.astype(jnp.float32), b, spatial)
    bidx = jnp.repeat(jnp.arange(b, dtype=jnp.int32), f0.shape[0] // b)
    tiles = f0.shape[0]
    per_step = min(max(1, self.chunk // TILE**3), tiles)
    pad = -tiles % per_step
    parts = [jnp.concatenate([x, jnp.repeat(x[-1:], pad, 0)]) if pad else x for x in (bidx, centroid, f0)]
    parts = [x.reshape(-1, per_step, *x.shape[1:]) for x in parts]

    def levels_at(window):
      out = []
      for i in range(len(self.levels)):  # a singleton level divides by zero in grid_sample: zeros, as here
        out.append(window(i) if i in live else jnp.zeros((k_win,) * 3, jnp.float32))
      return out

    def per_query(args):
      bq, cq, fq = args
      def one(q):
        bb, c, f = q
        return jnp.stack(levels_at(lambda i: ops.query_order(
            _window_one(self.levels[i], bb, c / 2**i, f, self.radius, self.sampler), self.sampler)))
      flat = (jnp.repeat(bq, TILE**3), cq.reshape(-1, 3), fq.reshape(-1, fq.shape[-1]))
      return jax.lax.map(one, flat).reshape(*cq.shape[:2], len(self.levels), k_win, k_win, k_win)

    @jax.checkpoint  # keep only each step's inputs for the backward pass, not its blocks
    def run(args):
      bq, cq, fq = args
      outs, fits = [], []
      for i in range(len(self.levels)):
        if i not in live:
          outs.append(jnp.zeros((*cq.shape[:2], k_win, k_win, k_win), jnp.float32))
          continue
        tile = tile_block_sizes(self.levels[i].shape[1:4], self.radius, self.sampler, self.margin, i)
        win, ok = _window_tiles(self.levels[i], bq, cq / 2**i, fq, self.radius, self.sampler, tile)
        outs.append(ops.query_order(win, self.sampler))
        fits.append(ok)
      fast = jnp.stack(outs, axis=2)
      if not fits:
        return fast
      # A tile whose windows spread wider than its block (a flow discontinuity, a wild initial flow) takes
      # the exact per-query path; smooth flows never do.
      return jax.lax.cond(jnp.all(jnp.stack(fits)), lambda _: fast, per_query, args)

    out = jax.lax.map(run, tuple(parts))  # (steps, per_step, T, L, K, K, K)
    out = out.reshape(-1, TILE**3, len(self.levels) * k_win**3)[:tiles]
    out = out / jnp.sqrt(jnp.float32(self.fmap0.shape[-1]))
    return _untile(out, b, spatial)

  def fit_fraction(self, coords):
    """Fraction of query tiles, over the levels, whose windows fit their shared block (the fast path)."""
    b, *spatial, _ = coords.shape
    centroid = _tiles(coords.astype(jnp.float32), b, spatial)
    fits = []
    for i, level in enumerate(self.levels):
      shape = level.shape[1:4]
      if min(shape) > 1:
        pos = ops.window_positions(centroid / 2**i, shape, self.radius, self.sampler)
        tile = tile_block_sizes(shape, self.radius, self.sampler, self.margin, i)
        fits.append(_tile_origins(pos, shape, block_sizes(shape, self.radius, self.sampler), tile)[1])
    return jnp.mean(jnp.stack(fits).astype(jnp.float32))


def local_bytes(feature_shape: Sequence[int], num_levels: int, radius: int, feature_dim: int, batch: int = 1,
                chunk: int = DEFAULT_CHUNK, margin: int = DEFAULT_MARGIN) -> int:
  """Bytes the local lookup holds besides the features: the pooled targets and one lax.map step's working set."""
  pooled, shape = 0, list(feature_shape)
  for _ in range(num_levels - 1):
    shape = [s // 2 for s in shape]
    pooled += math.prod(shape)
  queries = min(chunk, batch * math.prod(feature_shape))
  m, k = 2 * radius + 1 + TILE + margin, 2 * radius + 1
  # per level and step: the tiles' feature blocks, each query's correlation block, the contraction's partial
  # sums and tent weights, and the windows
  step = (-(-queries // TILE**3) * m**3 * feature_dim
          + queries * (m**3 + m * m * k + m * k * k + 3 * k * m + 2 * k**3))
  return F32 * (batch * pooled * feature_dim + num_levels * step)
