"""Per-voxel 3x3 tensor algebra in JAX, written out component by component.

A tensor field is a 3x3 nested list of arrays of one shape (T[i][j] is component (i, j)), so XLA fuses every
formula into elementwise loops. Batched jnp.linalg.eigh on (N, 3, 3) runs one LAPACK call per matrix on CPU
(about 5 s per million voxels here); the fixed-sweep Jacobi below is elementwise and about two orders faster.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

JACOBI_SWEEPS = 6   # cyclic sweeps; Jacobi converges quadratically, float32 is exact after 4-5 on 3x3
POLAR_STEPS = 8     # Newton steps of the polar decomposition; quadratic convergence from F near a rotation


def identity_like(x):
  """The identity tensor with components shaped like x."""
  one, zero = jnp.ones_like(x), jnp.zeros_like(x)
  return [[one if i == j else zero for j in range(3)] for i in range(3)]


def transpose(a):
  return [[a[j][i] for j in range(3)] for i in range(3)]


def matmul(a, b):
  return [[a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j] for j in range(3)] for i in range(3)]


def add(a, b, alpha=1.0):
  """a + alpha * b."""
  return [[a[i][j] + alpha * b[i][j] for j in range(3)] for i in range(3)]


def scale(a, s):
  return [[a[i][j] * s for j in range(3)] for i in range(3)]


def det(a):
  return (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
          - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
          + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))


def inverse(a):
  """The inverse by the adjugate; NaN where a is singular."""
  d = det(a)
  cof = [[(a[(j + 1) % 3][(i + 1) % 3] * a[(j + 2) % 3][(i + 2) % 3]
           - a[(j + 1) % 3][(i + 2) % 3] * a[(j + 2) % 3][(i + 1) % 3]) for j in range(3)] for i in range(3)]
  return scale(cof, 1.0 / d)


def trace(a):
  return a[0][0] + a[1][1] + a[2][2]


def sym_eigen(a, sweeps: int = JACOBI_SWEEPS):
  """Eigenvalues (3 arrays, descending) and unit eigenvectors (vecs[k][c]: component c of vector k) of a
  symmetric tensor, by cyclic Jacobi rotations with a fixed number of sweeps."""
  def sweep(_, carry):
    a, v = [list(r) for r in carry[0]], [list(r) for r in carry[1]]
    for p, q in ((0, 1), (0, 2), (1, 2)):
      apq = a[p][q]
      small = jnp.abs(apq) <= 1e-30
      theta = (a[q][q] - a[p][p]) / jnp.where(small, 1.0, 2.0 * apq)
      t = jnp.sign(theta) / (jnp.abs(theta) + jnp.sqrt(theta * theta + 1.0))
      t = jnp.where(small, 0.0, jnp.where(theta == 0, 1.0, t))
      c = 1.0 / jnp.sqrt(t * t + 1.0)
      s = t * c
      # a <- J^T a J with J = I except J_pp = J_qq = c, J_pq = s, J_qp = -s: zeroes a_pq.
      col_p = [c * a[k][p] - s * a[k][q] for k in range(3)]
      col_q = [s * a[k][p] + c * a[k][q] for k in range(3)]
      for k in range(3):
        a[k][p], a[k][q] = col_p[k], col_q[k]
      row_p = [c * a[p][k] - s * a[q][k] for k in range(3)]
      row_q = [s * a[p][k] + c * a[q][k] for k in range(3)]
      a[p], a[q] = row_p, row_q
      vp = [c * v[k][p] - s * v[k][q] for k in range(3)]
      vq = [s * v[k][p] + c * v[k][q] for k in range(3)]
      for k in range(3):
        v[k][p], v[k][q] = vp[k], vq[k]
    return tuple(tuple(r) for r in a), tuple(tuple(r) for r in v)

  # A loop, not unrolled Python: the unrolled sweeps made XLA compile for ~20 s.
  a, v = jax.lax.fori_loop(0, sweeps, sweep, (tuple(tuple(r) for r in a),
                                              tuple(tuple(r) for r in identity_like(a[0][0]))))
  values = [a[0][0], a[1][1], a[2][2]]
  vectors = [[v[c][k] for c in range(3)] for k in range(3)]  # column k of v is eigenvector k
  # Sort descending with three compare-and-swaps.
  for i, j in ((0, 1), (1, 2), (0, 1)):
    swap = values[i] < values[j]
    values[i], values[j] = jnp.where(swap, values[j], values[i]), jnp.where(swap, values[i], values[j])
    vi = [jnp.where(swap, vectors[j][c], vectors[i][c]) for c in range(3)]
    vj = [jnp.where(swap, vectors[i][c], vectors[j][c]) for c in range(3)]
    vectors[i], vectors[j] = vi, vj
  return values, vectors


def rotation(f, steps: int = POLAR_STEPS):
  """The rotation R of the polar decomposition F = R U, by Newton's iteration R <- (R + R^-T) / 2."""
  def step(_, r):
    r = [list(row) for row in r]
    return tuple(tuple(row) for row in scale(add(r, transpose(inverse(r))), 0.5))
  return [list(row) for row in jax.lax.fori_loop(0, steps, step, tuple(tuple(row) for row in f))]


def rotation_angle_deg(f):
  """The angle of the rotation part of F, in degrees: arccos((tr R - 1) / 2)."""
  r = rotation(f)
  # atan2 of the axial vector's length and (tr R - 1) / 2: arccos alone loses small angles in float32.
  sin = 0.5 * jnp.sqrt((r[2][1] - r[1][2]) ** 2 + (r[0][2] - r[2][0]) ** 2 + (r[1][0] - r[0][1]) ** 2)
  cos = (trace(r) - 1.0) / 2.0
  return jnp.degrees(jnp.arctan2(sin, cos))


def von_mises_equivalent(e):
  """The von Mises equivalent strain sqrt(2/3 e':e'), e' the deviatoric part of the symmetric tensor e."""
  m = trace(e) / 3.0
  dev = [[e[i][j] - m if i == j else e[i][j] for j in range(3)] for i in range(3)]
  return jnp.sqrt(2.0 / 3.0 * sum(dev[i][j] * dev[i][j] for i in range(3) for j in range(3)))
