"""Subset shape functions (first and second order) and their inverse-compositional algebra.

Inside a subset of half-width h the local coordinate is q = (x - node) / h, in [-1, 1] (normalised so the
Gauss-Newton matrices stay well conditioned in float32). A shape function is the map
W(q) = q + sum_k P[c, k] m_k(q) with the monomials m = [1, q0, q1, q2, q0^2, q1^2, q2^2, q0q1, q0q2, q1q2]
(the order of raftdvc_jax.data.synthetic.PolynomialField); first order uses k < 4 (12 parameters), second
order all 10 (30 parameters). The displacement at the node is h * P[:, 0]; du_c/dx_j = P[c, 1 + j].

Composition and inversion go through the 10x10 matrix M(P) with m(W(q)) = M(P) m(q) up to degree 2 (Gao et
al.'s IC-GN2 construction, here in 3-D): W_P o W_dP^-1 has the matrix M(P) M(dP)^-1. For first-order warps
this is exact; for second-order ones the truncated terms vanish as dP -> 0, so the fixed point is exact.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

NUM_MONOMIALS = 10
NUM_TERMS = {1: 4, 2: 10}  # monomials per component of each shape-function order
# Exponents of each monomial in (q0, q1, q2).
_EXPONENTS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0], [0, 2, 0], [0, 0, 2],
                       [1, 1, 0], [1, 0, 1], [0, 1, 1]])


def _product_table() -> np.ndarray:
  """T[i, j, k] = 1 when m_i m_j = m_k (products of degree <= 2 only; higher ones are truncated)."""
  index = {tuple(e): k for k, e in enumerate(_EXPONENTS)}
  table = np.zeros((NUM_MONOMIALS,) * 3, np.float32)
  for i, j in itertools.product(range(NUM_MONOMIALS), repeat=2):
    k = index.get(tuple(_EXPONENTS[i] + _EXPONENTS[j]))
    if k is not None:
      table[i, j, k] = 1.0
  return table


_TABLE = _product_table()
# For the rows of M: the quadratic monomial m_k = q_a q_b, as (k, a, b).
_QUAD_ROWS = [(4, 0, 0), (5, 1, 1), (6, 2, 2), (7, 0, 1), (8, 0, 2), (9, 1, 2)]


def monomials(q: jnp.ndarray) -> jnp.ndarray:
  """The 10 monomials of local coordinates q (..., 3), shape (..., 10)."""
  q0, q1, q2 = q[..., 0], q[..., 1], q[..., 2]
  return jnp.stack([jnp.ones_like(q0), q0, q1, q2, q0 * q0, q1 * q1, q2 * q2, q0 * q1, q0 * q2, q1 * q2], -1)


def warp(params: jnp.ndarray, basis: jnp.ndarray) -> jnp.ndarray:
  """W(q) = q + P m(q) at points whose monomials are basis (..., 10) (basis[..., 1:4] = q); shape (..., 3)."""
  return basis[..., 1:4] + basis @ params.T


def warp_matrix(params: jnp.ndarray) -> jnp.ndarray:
  """M(P) (10, 10): row k holds the monomial coefficients of m_k(W(q)), truncated to degree 2."""
  eye = jnp.eye(NUM_MONOMIALS, dtype=params.dtype)
  coords = eye[1:4] + params  # W_c as polynomials, (3, 10)
  table = jnp.asarray(_TABLE, params.dtype)
  rows = [eye[0], coords[0], coords[1], coords[2]]
  quad = {k: jnp.einsum('i,j,ijk->k', coords[a], coords[b], table) for k, a, b in _QUAD_ROWS}
  return jnp.stack(rows + [quad[k] for k in range(4, NUM_MONOMIALS)])


def compose_inverse(params: jnp.ndarray, delta: jnp.ndarray) -> jnp.ndarray:
  """The parameters of W_params o W_delta^-1 (the inverse-compositional update), (3, 10)."""
  m = warp_matrix(params) @ jnp.linalg.inv(warp_matrix(delta))
  return m[1:4] - jnp.eye(NUM_MONOMIALS, dtype=params.dtype)[1:4]
