"""Coarse-to-fine hand-over: a coarse arm's full-resolution flow as the fine arm's flow_init.

The model upsamples its feature-grid flow with align_corners=True trilinear interpolation (feature voxel i of
an axis of n voxels and h = ceil(n / s) feature voxels sits at voxel i * (n - 1) / (h - 1)) and scales it by
n / h (= s when s divides n). The hand-over inverts that: sample the full-resolution flow at those positions
(linear interpolation between voxels) and divide by n / h and by the model's flow scale (8 for VolRAFT, whose
upflow8 multiplies by 8 on top; ModelConfig.flow_scale), giving displacements in fine feature voxels, which
the model adds to its starting coordinates unchanged. It returns a model's own feature-grid flow exactly when
the nodes fall on voxels (n = s k + 1) or the flow is linear, and to interpolation accuracy otherwise.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np


def grid_positions(n: int, h: int) -> np.ndarray:
  """Voxel positions of the h feature voxels along an axis of n voxels (align_corners=True)."""
  if h == 1:
    return np.zeros(1)
  return np.arange(h) * ((n - 1) / (h - 1))


def _lerp_axis(a: np.ndarray, axis: int, pos: np.ndarray) -> np.ndarray:
  """Linear interpolation of `a` along `axis` at fractional positions inside [0, a.shape[axis] - 1]."""
  n = a.shape[axis]
  lo = np.clip(np.floor(pos).astype(np.int64), 0, max(n - 2, 0))
  hi = np.minimum(lo + 1, n - 1)
  frac = (pos - lo).astype(np.float32)
  shape = [1] * a.ndim
  shape[axis] = len(pos)
  frac = frac.reshape(shape)
  return np.take(a, lo, axis) * (1 - frac) + np.take(a, hi, axis) * frac


def to_feature_grid(flow: np.ndarray, stride: int, flow_scale: float = 1.0) -> np.ndarray:
  """Resamples a full-resolution flow (3, X0, X1, X2) to the feature grid of `stride`, in feature voxels.

  Returns (h0, h1, h2, 3), channel-last as the model takes flow_init, with h = ceil(X / stride); flow_scale
  is the fine model's ModelConfig.flow_scale.
  """
  flow = np.asarray(flow, np.float32)
  if flow.ndim != 4 or flow.shape[0] != 3:
    raise ValueError(f'expected a flow (3, X0, X1, X2), got shape {flow.shape}')
  size = flow.shape[1:]
  grid = tuple(math.ceil(n / stride) for n in size)
  out = flow
  for axis, (n, h) in enumerate(zip(size, grid)):
    out = _lerp_axis(out, axis + 1, grid_positions(n, h))
  scale = np.asarray([h / n / flow_scale for n, h in zip(size, grid)], np.float32)  # inverse of the model's
  return np.ascontiguousarray(np.moveaxis(out, 0, -1) * scale)


def flow_init_fn(coarse_flow, stride: int, flow_scale: float = 1.0
                 ) -> Callable[[Sequence[int], Sequence[int]], np.ndarray]:
  """A per-tile flow_init for the fine arm: (origin, tile) -> (h0, h1, h2, 3) in the tile's feature voxels.

  coarse_flow is the coarse arm's full-resolution flow (3, X0, X1, X2) (an array or memory map); each tile
  gets the crop under it, resampled to its own feature grid. stride and flow_scale are the fine model's.
  """
  if len(coarse_flow.shape) != 4 or coarse_flow.shape[0] != 3:
    raise ValueError(f'expected a coarse flow (3, X0, X1, X2), got shape {tuple(coarse_flow.shape)}')

  def fn(origin, tile):
    index = (slice(None),) + tuple(slice(o, o + t) for o, t in zip(origin, tile))
    return to_feature_grid(np.asarray(coarse_flow[index], np.float32), stride, flow_scale)

  return fn
