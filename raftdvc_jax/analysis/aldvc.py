"""pyALDVC-style node results (.npz and .csv), written and read.

pyALDVC keeps volumes as (z, y, x) arrays like ours, but lists every vector and tensor in (x, y, z) order:
coordinates[n] = (x, y, z) = array axes (2, 1, 0), U[n] = (u_x, u_y, u_z) = (u2, u1, u0), and the
displacement gradient F[n, i, j] = du_i/dx_j with both indices in (x, y, z). Writing reverses the last axis
of every vector (and both axes of a tensor); reading reverses them back. Nodes are listed z-major (x
fastest), as pyALDVC's mesh_setup lists them, so reshape(grid_shape) with grid_shape = (nz, ny, nx) works.

Units as pyALDVC's exports use them: .npz coordinates, U_1 and F_1 in voxels; strain (exx ...) and the
.csv displacement (disp_u, disp_v, disp_w) in physical units (voxels times voxel_size), .csv coordinates in
voxels. exx = E[2, 2], exy = E[2, 1], exz = E[2, 0], eyz = E[1, 0] of our array-order tensor.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from raftdvc_jax.analysis.nodes import NodeField
from raftdvc_jax.atomic import atomic_path
from raftdvc_jax.data import io

# pyALDVC name -> index (i, j) of our array-order tensor.
STRAIN_COMPONENTS = {'exx': (2, 2), 'eyy': (1, 1), 'ezz': (0, 0), 'exy': (2, 1), 'exz': (2, 0), 'eyz': (1, 0)}
CSV_COLUMNS = ('x', 'y', 'z', 'valid', 'disp_u', 'disp_v', 'disp_w') + tuple(STRAIN_COMPONENTS) + ('von_mises',)


def _flat(a, lead):
  a = np.asarray(a, np.float64)
  return a.reshape(lead + (-1,))


def write_aldvc_npz(path, axes, displacement, grad_voxel, strain, von_mises, voxel_size, volume_shape,
                    metadata=None) -> None:
  """Writes nodes at `axes` (three index arrays, array order): displacement (3, n0, n1, n2) in voxels,
  grad_voxel = du_i/dx_j (3, 3, n0, n1, n2) in voxel units, strain (3, 3, ...) and von_mises (...)
  physical, all in array order; stored in pyALDVC's (x, y, z) order."""
  grid = np.meshgrid(*axes, indexing='ij')
  n = grid[0].size
  coords = np.column_stack([g.ravel() for g in reversed(grid)]).astype(np.float64)
  u = _flat(displacement, (3,))[::-1].T
  g = _flat(grad_voxel, (3, 3))[::-1, ::-1].transpose(2, 0, 1)
  e = _flat(strain, (3, 3))
  valid = np.all(np.isfinite(u), axis=1) & np.all(np.isfinite(g), axis=(1, 2))
  spacing = [float(a[1] - a[0]) if len(a) > 1 else 1.0 for a in reversed(axes)]
  arrays = {'coordinates': coords, 'grid_shape': np.asarray([len(a) for a in axes], np.int64),
            'x0': np.asarray(axes[2], np.float64), 'y0': np.asarray(axes[1], np.float64),
            'z0': np.asarray(axes[0], np.float64), 'spacing': np.asarray(spacing),
            'node_valid': valid, 'voxel_size': np.asarray(voxel_size, np.float64)[::-1],
            'volume_shape': np.asarray(volume_shape, np.int64), 'U_1': u, 'F_1': g,
            'von_mises_1': _flat(von_mises, ())}
  arrays.update({name + '_1': e[i, j] for name, (i, j) in STRAIN_COMPONENTS.items()})
  if metadata is not None:
    arrays['metadata'] = np.array(json.dumps(metadata, sort_keys=True))
  assert arrays['U_1'].shape == (n, 3)
  io.write_npz(path, arrays)


def write_aldvc_csv(path, axes, displacement, strain, von_mises, voxel_size) -> None:
  """Writes pyALDVC's per-node CSV: x, y, z (voxels), valid, disp_u/v/w (physical), strain, von_mises."""
  grid = np.meshgrid(*axes, indexing='ij')
  h = np.asarray(voxel_size, np.float64)
  u = _flat(displacement, (3,)) * h[:, None]
  e = _flat(strain, (3, 3))
  vm = _flat(von_mises, ())
  cols = ([g.ravel() for g in reversed(grid)], [u[2], u[1], u[0]],
          [e[i, j] for i, j in STRAIN_COMPONENTS.values()] + [vm])
  valid = np.all(np.isfinite(u), axis=0)
  with atomic_path(path) as tmp, open(tmp, 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(CSV_COLUMNS)
    xyz, disp, rest = cols
    for k in range(valid.size):
      w.writerow([int(c[k]) for c in xyz] + [int(valid[k])]
                 + ['' if not np.isfinite(c[k]) else repr(float(c[k])) for c in disp + rest])


def read_aldvc(path, voxel_size=(1.0, 1.0, 1.0)) -> NodeField:
  """A pyALDVC result (.npz from export_npz / write_aldvc_npz, or its per-node .csv) as a NodeField in
  array order and voxels. voxel_size (array order) converts a .csv's physical displacement to voxels; an
  .npz is in voxels already. Frame 1 of a multi-frame .npz is read."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such file')
  suffix = os.path.splitext(path)[1].lower()
  if suffix == '.npz':
    try:
      with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ('coordinates', 'U_1') if k not in z.files]
        if missing:
          raise ValueError(f'{path}: not a pyALDVC result: no {", ".join(missing)}')
        coords, u = z['coordinates'], z['U_1']
        f = z['F_1'] if 'F_1' in z.files else None
        valid = z['node_valid'] if 'node_valid' in z.files and z['node_valid'].size == len(u) else None
        grid = tuple(int(v) for v in z['grid_shape']) if 'grid_shape' in z.files else None
    except ValueError:
      raise
    except Exception as e:  # zipfile / numpy errors on a broken archive
      raise ValueError(f'{path}: cannot read as .npz: {" ".join(str(e).split())}') from None
    valid = np.ones(len(u), bool) if valid is None else np.asarray(valid, bool)
    disp = np.asarray(u, np.float64)[:, ::-1]
    fv = None if f is None else np.eye(3) + np.asarray(f, np.float64)[:, ::-1, ::-1]
  elif suffix == '.csv':
    with open(path, newline='', encoding='utf-8') as fh:
      rows = list(csv.DictReader(fh))
    if not rows or any(k not in rows[0] for k in ('x', 'y', 'z', 'disp_u', 'disp_v', 'disp_w')):
      raise ValueError(f'{path}: not a pyALDVC CSV: needs columns x, y, z, disp_u, disp_v, disp_w')

    def col(name):
      return np.asarray([float(r[name]) if r.get(name, '') != '' else np.nan for r in rows])
    coords = np.column_stack([col('x'), col('y'), col('z')])
    h = np.asarray(voxel_size, np.float64)
    disp = np.column_stack([col('disp_w') / h[0], col('disp_v') / h[1], col('disp_u') / h[2]])
    valid = col('valid') > 0 if 'valid' in rows[0] else np.ones(len(rows), bool)
    fv, grid = None, None
  else:
    raise ValueError(f'{path}: a pyALDVC result must be .npz or .csv, got {suffix or "no suffix"!r}')
  positions = np.asarray(coords, np.float64)[:, ::-1]
  valid = valid & np.all(np.isfinite(disp), axis=1)
  return NodeField(positions, disp, valid, fv, grid, source=path)
