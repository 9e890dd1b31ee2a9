"""Inverse-compositional Gauss-Newton (IC-GN) on cubic subsets, all nodes of a batch at once (vmapped, jitted).

Criterion: zero-mean normalised sum of squared differences (ZNSSD) between the reference subset f (at the
integer voxels of vol0, no interpolation) and the deformed subset g (vol1's cubic B-spline at the warped
points). IC-GN keeps the Gauss-Newton matrix of the reference (built once per node from the reference's
exact spline gradient) and composes the inverse of each increment into the warp (Pan et al. 2013; second
order as Gao et al. 2015). Per node: iterations, ZNCC of the last evaluated iterate, and a status code.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from raftdvc_jax.refine import bspline
from raftdvc_jax.refine import shape

# Status codes of a node.
OK, MAX_ITER, LOW_CORRELATION, FEATURELESS, NOT_FINITE = 0, 1, 2, 3, 4
STATUS_NAMES = {OK: 'ok', MAX_ITER: 'max_iter', LOW_CORRELATION: 'low_correlation',
                FEATURELESS: 'featureless', NOT_FINITE: 'not_finite'}


def lattice(half: int) -> np.ndarray:
  """Offsets of a subset's voxels from its node, (n^3, 3) float32 with n = 2 half + 1, C order."""
  r = np.arange(-half, half + 1, dtype=np.float32)
  return np.stack(np.meshgrid(r, r, r, indexing='ij'), -1).reshape(-1, 3)


def _node(ref, ref_grad, start_g, coef1, node, shift0, texture_floor, tol, min_zncc, *, half, order, max_iter,
          pad):
  """IC-GN for one node from the integer translation shift0: (params (3, 10), zncc, iterations, status).

  start_g: vol1 at the integer voxels node + shift0 + subset offsets, which is the spline there, so the first
  iteration needs no interpolation.
  """
  k = shape.NUM_TERMS[order]
  basis = shape.monomials(jnp.asarray(lattice(half) / half))  # (n^3, 10)
  f = ref.reshape(-1)
  fz = f - f.mean()
  df = jnp.sqrt(jnp.sum(fz * fz))
  # d f(node + h W(q; dP)) / d dP[c, j] at dP = 0 is h * grad_c f * m_j(q).
  jac = (half * ref_grad.reshape(-1, 3)[:, :, None] * basis[:, None, :k]).reshape(-1, 3 * k)
  # ZNSSD compares zero-mean subsets, so the model's Jacobian is zero-mean too. Centring changes nothing in
  # J^T r (r is zero-mean) but makes the Gauss-Newton matrix right: left uncentred, a subset's mean gradient
  # couples into the translation and convergence turns slow and linear (20+ iterations on smooth speckle).
  jac = jac - jac.mean(axis=0)
  hess = jac.T @ jac
  # A tiny ridge keeps featureless subsets finite; they are flagged below, not trusted.
  ridge = 1e-7 * jnp.trace(hess) / (3 * k) + 1e-30
  hess_inv = jnp.linalg.inv(hess + ridge * jnp.eye(3 * k, dtype=hess.dtype))
  node_f = node.astype(jnp.float32)

  def update(params, g):
    """One Gauss-Newton step from the deformed subset g at params: (new params, change in voxels, zncc)."""
    gz = g - g.mean()
    dg = jnp.sqrt(jnp.sum(gz * gz))
    zncc = jnp.sum(fz * gz) / (df * dg)
    step = -(hess_inv @ (jac.T @ (fz - (df / dg) * gz))).reshape(3, k)
    delta = jnp.zeros((3, shape.NUM_MONOMIALS), params.dtype).at[:, :k].set(step)
    # |m_j| <= 1 on the subset, so h * sum_j |step_cj| bounds the change of the warp anywhere in it, voxels.
    change = half * jnp.max(jnp.sum(jnp.abs(step), axis=1))
    return shape.compose_inverse(params, delta), change, zncc

  def body(state):
    params, it, _, _ = state
    g = bspline.evaluate(coef1, node_f + half * shape.warp(params, basis), pad)
    params, change, zncc = update(params, g)
    return params, it + 1, change, zncc

  def cond(state):
    _, it, change, _ = state
    return (it < max_iter) & (change >= tol)  # a NaN change stops too (NaN >= tol is False)

  params0 = jnp.zeros((3, shape.NUM_MONOMIALS), jnp.float32).at[:, 0].set(shift0.astype(jnp.float32) / half)
  params1, change1, zncc1 = update(params0, start_g.reshape(-1))
  params, it, change, zncc = jax.lax.while_loop(cond, body, (params1, jnp.int32(1), change1, zncc1))
  finite = jnp.all(jnp.isfinite(params)) & jnp.isfinite(zncc)
  status = jnp.where(df <= texture_floor, FEATURELESS,
                     jnp.where(~finite, NOT_FINITE,
                               jnp.where(change >= tol, MAX_ITER,
                                         jnp.where(zncc < min_zncc, LOW_CORRELATION, OK))))
  return params, zncc, it, status.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('half', 'order', 'max_iter', 'pad'))
def solve_batch(vol0, grad0, vol1_padded, coef1, nodes, shifts, texture_floor, tol, min_zncc, *, half: int,
                order: int, max_iter: int, pad: int):
  """IC-GN for a batch of nodes (B, 3) int32 whose subsets lie inside vol0, from integer shifts (B, 3) int32.

  vol0 (X0, X1, X2) and grad0 (X0, X1, X2, 3): the reference and its spline gradient; vol1_padded: vol1
  reflect-padded by `pad` (SciPy's 'mirror'), coef1 its padded spline coefficients (bspline.prefilter).
  Returns params (B, 3, 10), zncc (B,), iterations (B,), status (B,).
  """
  n = 2 * half + 1
  limit = jnp.asarray(vol1_padded.shape, jnp.int32) - n

  def one(node, shift):
    start = node - half
    ref = jax.lax.dynamic_slice(vol0, (start[0], start[1], start[2]), (n, n, n))
    ref_grad = jax.lax.dynamic_slice(grad0, (start[0], start[1], start[2], 0), (n, n, n, 3))
    shift = jnp.clip(start + shift + pad, 0, limit) - start - pad  # keep the first subset inside the padding
    at = start + shift + pad
    start_g = jax.lax.dynamic_slice(vol1_padded, (at[0], at[1], at[2]), (n, n, n))
    return _node(ref, ref_grad, start_g, coef1, node, shift, texture_floor, tol, min_zncc, half=half,
                 order=order, max_iter=max_iter, pad=pad)

  return jax.vmap(one)(nodes, shifts)
