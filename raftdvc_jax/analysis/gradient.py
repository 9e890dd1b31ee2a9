"""Displacement gradients of a flow, in JAX, on blocks that carry a halo.

Two estimators, both mask-aware (a voxel outside the mask is never used and gets NaN):

- window <= 1: central differences where both neighbours along an axis are valid, one-sided differences
  where only one is (the volume border and mask edges), NaN where neither is. Exact for quadratic fields
  inside, for affine fields everywhere.
- window = w (odd, >= 3): a least-squares plane fit of each component over the w^3 window around the voxel,
  restricted to valid voxels (so the window is clipped at borders and mask edges). On a full window this is
  the 3-D Savitzky-Golay first derivative of order 1, and also of order 2: the odd basis function d_j is
  orthogonal to every even term on a symmetric window, so adding quadratic terms leaves the slope unchanged.
  Exact for affine fields everywhere.

Blocks are padded with invalid voxels (mask 0), so borders need no special case.
"""

from __future__ import annotations

import jax.numpy as jnp

from raftdvc_jax.analysis import tensors


def halo(window: int) -> int:
  """Voxels of context an estimator needs on each side."""
  return 1 if window <= 1 else window // 2


def _inner(a, pad: int, axis: int, lo: int, hi: int):
  """a[lo:hi] along `axis` and [pad:-pad] along the other two of the last three axes."""
  idx = [slice(None)] * a.ndim
  for k in range(3):
    ax = a.ndim - 3 + k
    idx[ax] = slice(lo, a.shape[ax] - hi) if k == axis else slice(pad, a.shape[ax] - pad)
  return a[tuple(idx)]


def _differences(u, m):
  """Central / one-sided differences; u (3, ...) and m (...) padded by one invalid voxel on every side."""
  grads = [[None] * 3 for _ in range(3)]
  for axis in range(3):
    mc, mf, mb = (_inner(m, 1, axis, 1, 1), _inner(m, 1, axis, 2, 0), _inner(m, 1, axis, 0, 2))
    vf, vb = mc & mf, mc & mb
    for c in range(3):
      uc, uf, ub = (_inner(u[c], 1, axis, 1, 1), _inner(u[c], 1, axis, 2, 0), _inner(u[c], 1, axis, 0, 2))
      d = jnp.where(vf & vb, 0.5 * (uf - ub), jnp.where(vf, uf - uc, jnp.where(vb, uc - ub, jnp.nan)))
      grads[c][axis] = jnp.where(mc, d, jnp.nan)
  return grads


def _correlate_axis(f, axis: int, power: int, h: int):
  """sum_{d=-h..h} f[x + d] d**power along `axis` (of the last three), shrinking that axis by 2h."""
  ax = f.ndim - 3 + axis
  n = f.shape[ax]
  out = 0.0
  for d in range(-h, h + 1):
    if power and d == 0:
      continue
    idx = [slice(None)] * f.ndim
    idx[ax] = slice(h + d, n - h + d)
    out = out + f[tuple(idx)] * float(d) ** power
  return out


def _moments(f, max_order: int, h: int):
  """{(e0, e1, e2): sum over the window of f(x + d) d0^e0 d1^e1 d2^e2} for e0 + e1 + e2 <= max_order."""
  level = {(): f}
  for axis in range(3):
    nxt = {}
    for key, a in level.items():
      for e in range(max_order - sum(key) + 1):
        nxt[key + (e,)] = _correlate_axis(a, axis, e, h)
    level = nxt
  return level


def _plane_fit(u, m, h: int):
  """Slopes of a masked least-squares plane fit over a (2h+1)^3 window; inputs padded by h invalid voxels."""
  w = m.astype(u.dtype)
  sm = _moments(w, 2, h)
  s0 = sm[(0, 0, 0)]
  safe = jnp.where(s0 > 0, s0, 1.0)
  unit = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
  sa = [sm[e] for e in unit]
  # Centred second moments C_ab = S_ab - S_a S_b / S0: the window's own coordinate scatter.
  cov = [[sm[tuple(x + y for x, y in zip(unit[a], unit[b]))] - sa[a] * sa[b] / safe for b in range(3)]
         for a in range(3)]
  det = tensors.det(cov)
  scale = cov[0][0] * cov[1][1] * cov[2][2]
  ok = (det > 1e-6 * scale) & (scale > 0) & _inner(m, h, 0, h, h)
  inv = tensors.inverse([[jnp.where(ok, cov[a][b], 1.0 if a == b else 0.0) for b in range(3)] for a in range(3)])
  grads = []
  for c in range(3):
    um = _moments(u[c] * w, 1, h)
    b = [um[e] - um[(0, 0, 0)] * sa[a] / safe for a, e in enumerate(unit)]
    grads.append([jnp.where(ok, inv[a][0] * b[0] + inv[a][1] * b[1] + inv[a][2] * b[2], jnp.nan)
                  for a in range(3)])
  return grads


def displacement_gradient(u, m, window: int = 0):
  """G[i][j] = d u_i / d x_j in voxel units on the inner block of u (3, A+2h, B+2h, C+2h) and m (same grid).

  h = halo(window); voxels outside the block or the mask must be marked invalid in m.
  """
  if window > 1 and window % 2 == 0:
    raise ValueError(f'the fit window must be odd, got {window}')
  if window <= 1:
    return _differences(u, m)
  return _plane_fit(u, m, halo(window))


def deformation_gradient(grads, voxel_size):
  """F_ij = delta_ij + d(u_i h_i) / d(X_j h_j) = delta_ij + (h_i / h_j) G_ij, from voxel-unit gradients."""
  h = voxel_size
  return [[(1.0 if i == j else 0.0) + (h[i] / h[j]) * grads[i][j] for j in range(3)] for i in range(3)]
