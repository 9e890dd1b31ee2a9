"""Tile plans, blend weights and the host-side stitcher of tiled flow estimation.

A plan covers a volume with tiles of one fixed shape (so one compiled function serves every tile). Along each
axis the tiles start every `step = round(tile * (1 - overlap))` voxels and the last one is shifted inward to end
at the border, so no tile needs padding; a tile never exceeds the volume (a volume no larger than one tile is one
tile). Tiles are blended with separable weights that are positive everywhere inside a tile, so every covered
voxel gets weight, and the sum is divided by the accumulated weight.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tempfile
from typing import Sequence

import numpy as np

from raftdvc_jax import runtime
from raftdvc_jax.data import masks

BLENDS = ('gaussian', 'cosine', 'uniform')
# Host work over whole volumes (normalising the blend) goes this many bytes at a time, so a volume larger
# than memory streams through the memory-mapped accumulators.
BLOCK_BYTES = 8 << 20
# Gaussian sigma as a fraction of the tile side: the edge weight is exp(-4.5) ~ 0.011 of the centre's.
GAUSSIAN_SIGMA = 1.0 / 6.0


def parse_tile(tile) -> tuple[int, int, int]:
  """Parses a tile given as N, (X, Y, Z) or 'N' / 'X,Y,Z' (0 = the whole volume along that axis)."""
  if isinstance(tile, str):
    parts = [p.strip() for p in tile.split(',')]
    try:
      values = [int(p) for p in parts]
    except ValueError:
      raise ValueError(f'tile {tile!r} is not N or X,Y,Z with integers') from None
  elif np.isscalar(tile):
    values = [tile]
  else:
    values = list(tile)
  if len(values) == 1:
    values = values * 3
  if len(values) != 3 or any(int(v) != v or v < 0 for v in values):
    raise ValueError(f'tile {tile!r} must be one or three integers >= 0 (0 = whole volume)')
  return tuple(int(v) for v in values)


def check_overlap(overlap: float) -> float:
  """Returns overlap as a float after checking it is a fraction in [0, 1)."""
  overlap = float(overlap)
  if not 0.0 <= overlap < 1.0:
    raise ValueError(f'overlap must be a fraction in [0, 1), got {overlap}')
  return overlap


def axis_starts(size: int, tile: int, overlap: float) -> list[int]:
  """Tile starts along one axis: every step = round(tile * (1 - overlap)) voxels, the last ending at size."""
  if tile >= size:
    return [0]
  step = max(1, int(round(tile * (1.0 - overlap))))
  count = math.ceil((size - tile) / step) + 1
  return [min(i * step, size - tile) for i in range(count)]


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """Where the tiles of one volume go: a fixed tile shape and the global origin of every tile."""

  shape: tuple[int, int, int]        # the volume (X0, X1, X2)
  tile: tuple[int, int, int]         # the tile shape, clipped to the volume
  starts: tuple[tuple[int, ...], ...]  # tile starts per axis

  @property
  def origins(self) -> list[tuple[int, int, int]]:
    """Every tile's global origin, in C order of the start grid."""
    return [tuple(o) for o in itertools.product(*self.starts)]

  @property
  def num_tiles(self) -> int:
    return math.prod(len(s) for s in self.starts)

  def slices(self, origin) -> tuple[slice, slice, slice]:
    """The index of one tile in the volume."""
    return tuple(slice(o, o + t) for o, t in zip(origin, self.tile))

  def select(self, mask=None) -> list[tuple[int, int, int]]:
    """Origins of the tiles that hold at least one voxel inside the mask (all tiles when mask is None)."""
    if mask is None:
      return self.origins
    return [o for o in self.origins if np.any(masks.inside(mask[self.slices(o)]))]


def plan_tiles(shape: Sequence[int], tile=0, overlap: float = 0.5, min_size: int = 1) -> TilePlan:
  """Plans tiles of one shape covering a volume; tile 0 on an axis (or a tile larger than it) = whole axis.

  min_size is the smallest side the model accepts; a tile or a volume side below it is refused.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f'expected a non-empty 3-D volume shape, got {shape}')
  requested = parse_tile(tile)
  overlap = check_overlap(overlap)
  clipped = tuple(n if t == 0 else min(t, n) for t, n in zip(requested, shape))
  if min(shape) < min_size:
    raise ValueError(f'volume {shape} is smaller than the model accepts: every side must be >= {min_size}')
  if min(clipped) < min_size:
    raise ValueError(f'tile {requested} is smaller than the model accepts: every side must be >= {min_size} '
                     f'(stride x pyramid)')
  starts = tuple(tuple(axis_starts(n, t, overlap)) for n, t in zip(shape, clipped))
  return TilePlan(shape, clipped, starts)


# ---------------------------------------------------------------------------------------------------------
# Blend weights.


def _window(n: int, kind: str, overlap: float) -> np.ndarray:
  """A 1-D window of length n, symmetric and strictly positive."""
  if kind == 'uniform' or n == 1:
    return np.ones(n, np.float64)
  if kind == 'gaussian':
    x = np.arange(n) - (n - 1) / 2.0
    return np.exp(-0.5 * (x / (GAUSSIAN_SIGMA * n)) ** 2)
  if kind == 'cosine':
    # Tukey window whose tapers span the overlap with each neighbour (alpha = 2 * overlap, Hann at 0.5),
    # sampled at the interior points of n + 2 so that the end samples stay above zero.
    alpha = min(1.0, 2.0 * overlap)
    if alpha <= 0:
      return np.ones(n, np.float64)
    x = np.arange(1, n + 1) / (n + 1.0)
    x = np.minimum(x, 1.0 - x)  # distance to the nearer end, in [0, 0.5]
    taper = 0.5 * (1.0 - np.cos(2.0 * np.pi * x / alpha))
    return np.where(x < alpha / 2.0, taper, 1.0)
  raise ValueError(f'blend {kind!r} is not one of {", ".join(BLENDS)}')


def blend_weights(tile: Sequence[int], kind: str = 'gaussian', overlap: float = 0.5) -> np.ndarray:
  """Separable float32 weights (t0, t1, t2) for blending a tile, maximal 1 at the centre, > 0 everywhere."""
  if kind not in BLENDS:
    raise ValueError(f'blend {kind!r} is not one of {", ".join(BLENDS)}')
  w0, w1, w2 = (_window(int(n), kind, overlap) for n in tile)
  w = w0[:, None, None] * w1[None, :, None] * w2[None, None, :]
  return (w / w.max()).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Stitching.


class Stitcher:
  """Accumulates w * flow and w over tiles on the host and normalises at the end.

  The accumulators live in RAM, or in an np.memmap over an unlinked temporary file when they would take more
  than half of the available memory (memmap=None) or when asked to (memmap=True); the temporary file vanishes
  when the result is released, so nothing is left on disk.
  """

  def __init__(self, shape: Sequence[int], channels: int = 3, memmap: bool | None = None,
               tmp_dir: str | None = None):
    self.shape = tuple(int(s) for s in shape)
    self.channels = channels
    count = math.prod(self.shape)
    need = 4 * count * (channels + 1)
    self.memmapped = need > runtime.available_ram_bytes() // 2 if memmap is None else bool(memmap)
    if self.memmapped:
      # One file for both accumulators; weights after the flow. The file object keeps the data alive.
      self._file = tempfile.TemporaryFile(dir=tmp_dir, prefix='raftdvc_stitch_')
      self._file.truncate(need)
      self.flow = np.memmap(self._file, np.float32, 'r+', 0, (channels, *self.shape))
      self.weight = np.memmap(self._file, np.float32, 'r+', 4 * count * channels, self.shape)
    else:
      self.flow = np.zeros((channels, *self.shape), np.float32)
      self.weight = np.zeros(self.shape, np.float32)

  def add(self, origin: Sequence[int], flow: np.ndarray, weight: np.ndarray) -> None:
    """Adds one tile's flow, channel-last (t0, t1, t2, C), with its blend weights (t0, t1, t2)."""
    index = tuple(slice(o, o + t) for o, t in zip(origin, weight.shape))
    self.flow[(slice(None),) + index] += np.moveaxis(flow, -1, 0) * weight
    self.weight[index] += weight

  def result(self, mask=None, rows: int | None = None) -> np.ndarray:
    """Normalises in place and returns the flow (C, X0, X1, X2): 0 where no tile ran or outside the mask."""
    plane = math.prod(self.shape[1:])
    rows = rows or max(1, BLOCK_BYTES // (4 * plane * (self.channels + 1)))
    for start in range(0, self.shape[0], rows):
      block = slice(start, start + rows)
      w = np.asarray(self.weight[block])
      covered = w > 0
      if mask is not None:
        covered &= masks.inside(mask[block])
      f = np.asarray(self.flow[:, block])
      self.flow[:, block] = np.where(covered, f / np.where(covered, w, 1.0), 0.0)
    if isinstance(self.flow, np.memmap):
      self.flow.flush()
    return self.flow
