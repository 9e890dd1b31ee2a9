"""Cubic B-spline interpolation of a volume: host prefilter once, evaluation in JAX (differentiable).

Boundary: SciPy's 'mirror' mode (the volume continues as its reflection about the first and last sample,
d c b | a b c d | c b a). The coefficients come from scipy.ndimage.spline_filter(order=3, mode='mirror') on
the host, once per volume (a recursive IIR filter; SciPy's is exact and fast, so it is not rewritten in
JAX), and are padded by PAD reflected coefficients on every side. Evaluation is then a 4x4x4 window per
point, so values match scipy.ndimage.map_coordinates(order=3, mode='mirror') for points within PAD - 2
voxels of the volume; points farther out are clamped to that band.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

PAD = 12  # reflected coefficients on every side; deformed subsets may leave the volume by up to PAD - 2


def prefilter(volume: np.ndarray, pad: int = PAD) -> np.ndarray:
  """Cubic B-spline coefficients of a volume (mirror boundary), float32, padded by `pad` on every side."""
  volume = np.asarray(volume, np.float64)
  coef = ndimage.spline_filter(volume, order=3, mode='mirror', output=np.float64)
  # A spline with coefficients mirrored about a sample is itself mirror-symmetric there: padding the
  # coefficients this way is exact.
  return reflect_pad(coef, pad).astype(np.float32)


def reflect_pad(volume: np.ndarray, pad: int) -> np.ndarray:
  """volume padded by `pad` mirrored samples on every side (SciPy's 'mirror', numpy's 'reflect')."""
  while pad > 0:  # np.pad reflects at most n - 1 samples at a time
    step = min(pad, min(volume.shape) - 1)
    volume = np.pad(volume, step, mode='reflect')
    pad -= step
  return volume


def _weights(t):
  """The 4 cubic B-spline weights of samples floor(x)-1 .. floor(x)+2 at fraction t, shape t.shape + (4,)."""
  t2 = t * t
  t3 = t2 * t
  s = 1.0 - t
  return jnp.stack([s * s * s / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6], -1)


def _dweights(t):
  """Derivatives of _weights with respect to t."""
  t2 = t * t
  s = 1.0 - t
  return jnp.stack([-0.5 * s * s, 1.5 * t2 - 2 * t, -1.5 * t2 + t + 0.5, 0.5 * t2], -1)


def _windows(coef, points, pad):
  """The 4x4x4 coefficient windows (P, 4, 4, 4) and fractions (P, 3) of points (P, 3) in volume coordinates."""
  hi = jnp.asarray(coef.shape, points.dtype) - 2.0 - 1e-3
  x = jnp.clip(points + pad, 1.0, hi)
  base = jnp.floor(x)
  t = x - base
  start = base.astype(jnp.int32) - 1
  # One (4, 4, 4) slice per point: on XLA-CPU this gathers faster than 64 scalar gathers.
  win = jax.vmap(lambda s: jax.lax.dynamic_slice(coef, (s[0], s[1], s[2]), (4, 4, 4)))(start)
  return win, t


def evaluate(coef: jax.Array, points: jax.Array, pad: int = PAD) -> jax.Array:
  """The spline at points (..., 3) given in voxel coordinates of the unpadded volume; shape points.shape[:-1]."""
  lead = points.shape[:-1]
  win, t = _windows(coef, points.reshape(-1, 3), pad)
  w0, w1, w2 = _weights(t[:, 0]), _weights(t[:, 1]), _weights(t[:, 2])
  v = jnp.einsum('pabc,pc->pab', win, w2)
  v = jnp.einsum('pab,pb->pa', v, w1)
  return jnp.einsum('pa,pa->p', v, w0).reshape(lead)


def evaluate_with_gradient(coef: jax.Array, points: jax.Array, pad: int = PAD):
  """The spline and its gradient (d/dx0, d/dx1, d/dx2) at points (..., 3): shapes (...,) and (..., 3)."""
  lead = points.shape[:-1]
  win, t = _windows(coef, points.reshape(-1, 3), pad)
  w = [_weights(t[:, i]) for i in range(3)]
  d = [_dweights(t[:, i]) for i in range(3)]
  v2 = jnp.einsum('pabc,pc->pab', win, w[2])
  d2 = jnp.einsum('pabc,pc->pab', win, d[2])
  v21 = jnp.einsum('pab,pb->pa', v2, w[1])
  v2d1 = jnp.einsum('pab,pb->pa', v2, d[1])
  d2v1 = jnp.einsum('pab,pb->pa', d2, w[1])
  value = jnp.einsum('pa,pa->p', v21, w[0])
  grad = jnp.stack([jnp.einsum('pa,pa->p', v21, d[0]), jnp.einsum('pa,pa->p', v2d1, w[0]),
                    jnp.einsum('pa,pa->p', d2v1, w[0])], -1)
  return value.reshape(lead), grad.reshape(lead + (3,))


def grid_gradient(coef: np.ndarray, pad: int = PAD) -> np.ndarray:
  """The spline's exact gradient at every voxel of the unpadded volume, float32 (X0, X1, X2, 3), on the host.

  At integer points the cubic B-spline's value kernel is [1/6, 2/3, 1/6] and its derivative kernel
  [-1/2, 0, 1/2]; the gradient is their separable product with the coefficients.
  """
  coef = np.asarray(coef, np.float32)
  inner = tuple(slice(pad - 1, n - pad + 1) for n in coef.shape)  # one extra coefficient each side
  c = coef[inner]
  smooth = np.array([1 / 6, 2 / 3, 1 / 6], np.float32)
  slope = np.array([-0.5, 0.0, 0.5], np.float32)
  out = []
  for axis in range(3):
    g = c
    for a in range(3):
      g = ndimage.correlate1d(g, slope if a == axis else smooth, axis=a, mode='constant')
    out.append(g[1:-1, 1:-1, 1:-1])
  return np.stack(out, -1)
