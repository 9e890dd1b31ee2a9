"""From node results on a regular lattice back to a dense field (host, numpy/scipy).

Fill: a node that did not converge takes the mean of its valid face neighbours, repeated outwards until
every node has a value (then those filled nodes are relaxed a few times towards their neighbours' mean).

Node filter (optional): a quadratic Savitzky-Golay filter along each lattice axis in turn (least-squares
quadratic over `window` nodes; at the lattice edges the fit of the edge window). It reduces the noise of the
node values and leaves any field of degree <= 2 per axis unchanged, so no affine or quadratic field is biased.

Dense field: on each axis, the not-a-knot cubic spline through the node values (exact for fields up to
cubic along the axis), evaluated at every voxel; beyond the outermost nodes it continues linearly with the
spline's end slope (C1 across the last node). The 3-D field is the tensor product of the three axes'
operators, so it interpolates the nodes exactly, is C2 inside the lattice, and reproduces affine fields
everywhere.
"""

from __future__ import annotations

import numpy as np
from scipy import interpolate
from scipy import signal


def fill_invalid(values: np.ndarray, valid: np.ndarray, relax: int = 20) -> np.ndarray:
  """values (C, n0, n1, n2) with invalid nodes replaced from their neighbours (kept as they are if none is valid)."""
  values = np.array(values, np.float64)
  valid = np.asarray(valid, bool)
  if valid.all() or not valid.any():  # nothing to fill, or nothing to fill from: keep the raw values
    return values
  known = valid.copy()
  values[:, ~known] = 0.0

  def neighbour_sums(v, mask):
    total = np.zeros_like(v)
    count = np.zeros(mask.shape)
    for axis in range(3):
      for shift in (1, -1):
        m = np.zeros(mask.shape, bool)
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        src[axis] = slice(None, -1) if shift == 1 else slice(1, None)
        dst[axis] = slice(1, None) if shift == 1 else slice(None, -1)
        m[tuple(dst)] = mask[tuple(src)]
        shifted = np.zeros_like(v)
        shifted[(slice(None),) + tuple(dst)] = v[(slice(None),) + tuple(src)]
        total += shifted * m
        count += m
    return total, count

  while not known.all():  # grows by at least one layer per pass
    total, count = neighbour_sums(values * known, known)
    front = ~known & (count > 0)
    values[:, front] = total[:, front] / count[front]
    known |= front
  for _ in range(relax):  # relax filled nodes towards the mean of all their neighbours; valid ones stay
    total, count = neighbour_sums(values, np.ones(known.shape, bool))
    values[:, ~valid] = total[:, ~valid] / count[~valid]
  return values


def filter_nodes(values: np.ndarray, window: int) -> np.ndarray:
  """values (C, n0, n1, n2) after the quadratic Savitzky-Golay filter of `window` nodes on each long enough axis."""
  out = np.asarray(values, np.float64)
  if window < 4:  # 3 nodes or fewer: the quadratic fit is the identity
    return out
  for axis in (1, 2, 3):
    if out.shape[axis] >= window:
      out = signal.savgol_filter(out, window, 2, axis=axis, mode='interp')
  return out


def axis_operator(nodes: np.ndarray, size: int) -> np.ndarray:
  """(size, n) matrix taking node values on one axis to every voxel 0..size-1 (see the module docstring)."""
  nodes = np.asarray(nodes, np.float64)
  n = len(nodes)
  x = np.arange(size, dtype=np.float64)
  if n == 1:
    return np.ones((size, 1))
  k = min(3, n - 1)
  spline = interpolate.make_interp_spline(nodes, np.eye(n), k=k)  # one spline per unit node vector
  inside = np.clip(x, nodes[0], nodes[-1])
  return spline(inside) + (x - inside)[:, None] * spline.derivative()(inside)


def to_dense(values: np.ndarray, axes, shape) -> np.ndarray:
  """values (C, n0, n1, n2) on the lattice axes[0] x axes[1] x axes[2] -> float32 (C, X0, X1, X2)."""
  ops = [axis_operator(a, s) for a, s in zip(axes, shape)]
  out = np.einsum('cijk,zk->cijz', values, ops[2])
  out = np.einsum('cijz,yj->ciyz', out, ops[1])
  return np.einsum('ciyz,xi->cxyz', out, ops[0]).astype(np.float32)
