"""spam's correlation TSV (the file spam-ldic writes and spam-regularStrain -pf reads), written and read.

spam orders everything as numpy does, (Z, Y, X) = array axes (0, 1, 2), and works in voxels: positions,
displacements and the deformation gradient (F in voxel units, I + du/dx) are in voxels, whatever the voxel
size. Nodes are listed Z-major (X fastest), which spam-regularStrain relies on when it reshapes the field.
spam reads columns by name (numpy.genfromtxt(names=True)); the columns here follow the order the issue
asked for, NodeNumber Zpos Ypos Xpos Zdisp Ydisp Xdisp Fzz ... Fxx, then spam's convergence columns.
returnStatus is 2 (spam's "converged") at valid nodes; elsewhere it is -5 (spam's "not correlated"), the
displacement NaN and F the identity, so spam-regularStrain (which masks returnStatus < 2) skips them.
"""

from __future__ import annotations

import os

import numpy as np

from raftdvc_jax.analysis.nodes import NodeField
from raftdvc_jax.atomic import atomic_path

AXES = 'zyx'
COLUMNS = (('NodeNumber', 'Zpos', 'Ypos', 'Xpos', 'Zdisp', 'Ydisp', 'Xdisp')
           + tuple(f'F{a}{b}' for a in AXES for b in AXES)
           + ('returnStatus', 'deltaPhiNorm', 'iterations', 'error'))
CONVERGED, NOT_CORRELATED = 2, -5


def voxel_gradient(f_phys, voxel_size):
  """F in voxel units, I + du/dx (spam's), from the physical F: G_ij = (h_j / h_i) (F_ij - delta_ij)."""
  h = np.asarray(voxel_size, np.float64)
  f = np.asarray(f_phys, np.float64)
  eye = np.eye(3).reshape((3, 3) + (1,) * (f.ndim - 2))
  ratio = (h[None, :] / h[:, None]).reshape((3, 3) + (1,) * (f.ndim - 2))
  return eye + ratio * (f - eye)


def write_spam_tsv(path, axes, displacement, f_voxel) -> None:
  """Writes nodes at the grid `axes` (three index arrays), with displacement (3, n0, n1, n2) and F in voxel
  units (3, 3, n0, n1, n2) in array order; nodes with any NaN are written with returnStatus -5."""
  grid = np.meshgrid(*axes, indexing='ij')
  n = grid[0].size
  disp = np.asarray(displacement, np.float64).reshape(3, n)
  f = np.asarray(f_voxel, np.float64).reshape(3, 3, n)
  valid = np.all(np.isfinite(disp), axis=0) & np.all(np.isfinite(f), axis=(0, 1))
  table = np.column_stack(
      [np.arange(n)] + [g.ravel() for g in grid] + [np.where(valid, disp[c], np.nan) for c in range(3)]
      + [np.where(valid, f[i, j], 1.0 if i == j else 0.0) for i in range(3) for j in range(3)]
      + [np.where(valid, CONVERGED, NOT_CORRELATED), np.zeros(n), np.zeros(n), np.zeros(n)])
  formats = ['%d', '%d', '%d', '%d'] + ['%.7f'] * 12 + ['%d', '%.7f', '%d', '%.7f']
  with atomic_path(path) as tmp:
    np.savetxt(tmp, table, delimiter='\t', fmt=formats, header='\t'.join(COLUMNS), comments='')


def read_spam_tsv(path) -> NodeField:
  """A spam correlation TSV (spam-ldic, spam-pixelSearch, or write_spam_tsv) as a NodeField in array order;
  valid = returnStatus >= 2 where that column exists."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such file')
  try:
    table = np.genfromtxt(path, delimiter='\t', names=True)
  except Exception as e:  # genfromtxt raises several types on a malformed table
    raise ValueError(f'{path}: not a spam TSV: {" ".join(str(e).split())}') from None
  table = np.atleast_1d(table)
  names = table.dtype.names or ()
  missing = [c for c in ('Zpos', 'Ypos', 'Xpos', 'Zdisp', 'Ydisp', 'Xdisp') if c not in names]
  if missing:
    raise ValueError(f'{path}: not a spam correlation TSV: no column {", ".join(missing)}')
  positions = np.column_stack([table[f'{a.upper()}pos'] for a in AXES])
  disp = np.column_stack([table[f'{a.upper()}disp'] for a in AXES])
  f = None
  if all(f'F{a}{b}' in names for a in AXES for b in AXES):
    f = np.stack([np.stack([table[f'F{a}{b}'] for b in AXES], axis=-1) for a in AXES], axis=-2)
  valid = np.all(np.isfinite(disp), axis=1)
  if 'returnStatus' in names:
    valid &= table['returnStatus'] >= CONVERGED
  grid = tuple(len(np.unique(positions[:, k])) for k in range(3))
  return NodeField(positions, disp, valid, f, grid if np.prod(grid) == len(table) else None, source=path)
