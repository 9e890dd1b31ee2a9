"""Geometric augmentation of (reference, deformed, flow) samples, numpy only so it runs in loader threads.

A sample is a dict. The entry 'flow' is a displacement field (3, X0, X1, X2) with channel c along array axis c;
every other 3-D array (vol0, vol1, I1, I2, mask) is a volume; anything else passes through. Every transform
moves all of them together and rewrites the flow's components, so I2(x + u(x)) ~ I1(x) still holds:

  flip axis a              u_a -> -u_a
  rot90 k=1 in (a, b)      new (u_a, u_b) = (-u_b, u_a)  (np.rot90's sense: new[i, j] = old[j, n_b - 1 - i])
  crop                     components unchanged
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

PLANES = ((0, 1), (0, 2), (1, 2))


def _map(sample: Mapping[str, Any], volume_fn, flow_fn) -> dict[str, Any]:
  out = {}
  for key, value in sample.items():
    if key == 'flow':
      out[key] = flow_fn(np.asarray(value))
    elif isinstance(value, np.ndarray) and value.ndim == 3:
      out[key] = volume_fn(value)
    else:
      out[key] = value
  return out


def flip(sample: Mapping[str, Any], axis: int) -> dict[str, Any]:
  """Mirrors the sample along one array axis."""
  def flow_fn(u):
    u = np.flip(u, axis=axis + 1).copy()
    u[axis] *= -1
    return u
  return _map(sample, lambda v: np.flip(v, axis=axis), flow_fn)


def rot90(sample: Mapping[str, Any], k: int, axes: tuple[int, int]) -> dict[str, Any]:
  """Rotates the sample by k quarter turns in the plane of two array axes, as np.rot90(..., k, axes)."""
  a, b = axes
  if a == b or not {a, b} <= {0, 1, 2}:
    raise ValueError(f'rot90 axes must be two different array axes in 0..2, got {axes}')
  k %= 4

  def flow_fn(u):
    u = np.rot90(u, k, axes=(a + 1, b + 1))
    ua, ub = u[a], u[b]
    for _ in range(k):  # one quarter turn: (u_a, u_b) -> (-u_b, u_a)
      ua, ub = -ub, ua
    out = u.copy()
    out[a], out[b] = ua, ub
    return out
  return _map(sample, lambda v: np.rot90(v, k, axes=(a, b)), flow_fn)


def crop(sample: Mapping[str, Any], start: Sequence[int], size: Sequence[int]) -> dict[str, Any]:
  """Cuts the box [start, start + size) out of every volume and the flow."""
  box = tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start, size))
  return _map(sample, lambda v: v[box], lambda u: u[(slice(None),) + box])


def _grid_shape(sample: Mapping[str, Any]) -> tuple[int, int, int]:
  if 'flow' in sample:
    return tuple(np.shape(sample['flow'])[1:])
  for value in sample.values():
    if isinstance(value, np.ndarray) and value.ndim == 3:
      return value.shape
  raise ValueError('sample holds no volume and no flow')


def random_crop(sample: Mapping[str, Any], rng: np.random.Generator, size: int | Sequence[int]) -> dict[str, Any]:
  """Crops a box of `size` at a uniformly random position."""
  shape = _grid_shape(sample)
  size = (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)
  if any(s > n or s < 1 for s, n in zip(size, shape)):
    raise ValueError(f'crop size {size} does not fit the sample grid {shape}')
  start = [int(rng.integers(0, n - s + 1)) for s, n in zip(size, shape)]
  return crop(sample, start, size)


@dataclasses.dataclass(frozen=True)
class Augment:
  """Random crop, then a random flip per axis and a random rot90 in one of the allowed planes.

  keep_shape: rotate only in planes whose two sides are equal, so every sample of a batch keeps its shape.
  """

  flip_prob: float = 0.5
  planes: tuple[tuple[int, int], ...] = PLANES
  crop: int | tuple[int, int, int] | None = None
  keep_shape: bool = True

  def __post_init__(self):
    if not 0 <= self.flip_prob <= 1:
      raise ValueError(f'flip_prob must be in [0, 1], got {self.flip_prob}')
    planes = tuple(tuple(int(a) for a in p) for p in self.planes)
    if any(len(p) != 2 or p[0] == p[1] or not set(p) <= {0, 1, 2} for p in planes):
      raise ValueError(f'planes must be pairs of different axes in 0..2, got {self.planes}')
    object.__setattr__(self, 'planes', planes)

  def __call__(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """The augmented sample; all randomness comes from rng."""
    out = dict(sample)
    if self.crop is not None:
      out = random_crop(out, rng, self.crop)
    for axis in range(3):
      if rng.random() < self.flip_prob:
        out = flip(out, axis)
    shape = _grid_shape(out)
    planes = [p for p in self.planes if not self.keep_shape or shape[p[0]] == shape[p[1]]]
    if planes:
      plane = planes[int(rng.integers(len(planes)))]
      out = rot90(out, int(rng.integers(4)), plane)
    # Flips and rotations are views with odd strides; hand contiguous arrays to whoever stacks them.
    return {k: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v for k, v in out.items()}

