"""A second, independent pair generator: Gaussian blobs under analytic fields (translation, rotation, stretch,
sinusoid), for checking that a model trained on raftdvc_jax.data.synthetic does not only fit that generator.

Blobs are isotropic Gaussians summed (not hard spheres composited by max), with Gaussian read noise, and the
fields are families synthetic.py does not draw (uniaxial stretch, sinusoid). Flow convention as everywhere:
flow[c] = displacement along array axis c, reference -> deformed, I2(x + u(x)) ~ I1(x).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

FIELDS = ('translation', 'rotation', 'stretch', 'sinusoid')


def _field(rng: np.random.Generator, kind: str, shape: Sequence[int], amplitude: float):
  """u(points) for (N, 3) index coordinates, scaled so that max_c max_grid |u_c| = amplitude."""
  centre = (np.asarray(shape, np.float64) - 1) / 2
  if kind == 'translation':
    direction = rng.normal(size=3)
    vec = direction / np.abs(direction).max() * amplitude
    return lambda p: np.broadcast_to(vec, p.shape)
  if kind == 'rotation':
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing='ij')).reshape(3, -1).T - centre
    theta = amplitude / np.abs(corners @ k.T).max()  # small angle: |u| ~ theta |k x|
    rot = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)
    scale = amplitude / np.abs(corners @ (rot - np.eye(3)).T).max()
    return lambda p: ((p - centre) @ (rot - np.eye(3)).T) * scale
  if kind == 'stretch':
    axis = int(rng.integers(3))
    strain = amplitude / centre[axis] * rng.choice([-1.0, 1.0])
    def stretch(p):
      u = np.zeros_like(p)
      u[:, axis] = strain * (p[:, axis] - centre[axis])
      return u
    return stretch
  if kind == 'sinusoid':
    comp, along = int(rng.integers(3)), int(rng.integers(3))
    wavelength = rng.uniform(1.0, 2.0) * shape[along]  # half to one period across the volume
    phase = rng.uniform(0, 2 * np.pi)
    def wave(p):
      u = np.zeros_like(p)
      u[:, comp] = amplitude * np.sin(2 * np.pi * p[:, along] / wavelength + phase)
      return u
    return wave
  raise ValueError(f'field {kind!r} is not one of {", ".join(FIELDS)}')


def _render(centres: np.ndarray, sigma: float, shape: Sequence[int], weights: np.ndarray) -> np.ndarray:
  """Sum of isotropic Gaussians of std `sigma` at `centres`, evaluated on the grid (each within 3.5 sigma)."""
  out = np.zeros(shape, np.float64)
  half = int(np.ceil(3.5 * sigma))
  offsets = np.arange(-half, half + 1)
  for c, w in zip(centres, weights):
    idx = [np.floor(c[a]).astype(int) + offsets for a in range(3)]
    keep = [(i >= 0) & (i < n) for i, n in zip(idx, shape)]
    if not all(k.any() for k in keep):
      continue
    idx = [i[k] for i, k in zip(idx, keep)]
    g = [np.exp(-0.5 * ((i - c[a]) / sigma) ** 2) for a, i in enumerate(idx)]
    out[np.ix_(*idx)] += w * g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
  return out


def make_pair(kind: str, size: int | Sequence[int], amplitude: float, seed, density: float = 3.0,
              sigma: float = 1.2, noise: float = 0.02) -> dict[str, Any]:
  """{'I1', 'I2': float32 volumes, 'flow': float32 (3, X0, X1, X2), 'metadata'} for one field `kind`."""
  shape = (size,) * 3 if np.isscalar(size) else tuple(size)
  rng = np.random.default_rng(seed)
  u = _field(rng, kind, shape, amplitude)
  margin = amplitude + 4 * sigma + 1
  lo, hi = -margin, np.asarray(shape) - 1 + margin
  count = int(density * np.prod(hi - lo) / 1000)
  centres = rng.uniform(lo, hi, size=(count, 3))
  weights = rng.uniform(0.6, 1.0, size=count)
  i1 = _render(centres, sigma, shape, weights)
  i2 = _render(centres + u(centres), sigma, shape, weights)
  grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing='ij'), -1)
  flow = np.moveaxis(u(grid.reshape(-1, 3)).reshape(*shape, 3), -1, 0).astype(np.float32)
  i1 = (i1 + noise * rng.standard_normal(shape)).astype(np.float32)
  i2 = (i2 + noise * rng.standard_normal(shape)).astype(np.float32)
  return {'I1': i1, 'I2': i2, 'flow': flow,
          'metadata': {'generator': 'raftdvc_jax.data.blobs', 'field': kind, 'amplitude': amplitude,
                       'seed': seed if np.isscalar(seed) else list(seed)}}
