"""VTK XML ImageData (.vti) files that ParaView shows the right way round, written slab by slab.

VTK's x axis is array axis 2 (the fastest in memory), y is axis 1 and z is axis 0, so the C-order bytes of
an (X0, X1, X2) array are already VTK's point order and no array is transposed or copied whole. Arrays go
into one appended raw block with UInt64 sizes (files over 4 GB), read slab by slab along axis 0, so
memory-mapped fields of any size stream through.

Why not a library: pyevtk (the small one) packs vector data one voxel at a time in Python and needs every
array in memory; vtk/pyvista are a ~140 MB wheel (~570 MB installed) for a format this module writes in
sixty lines. The files are checked with VTK's own reader in tests/analysis/test_formats.py.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import numpy as np

from raftdvc_jax.atomic import atomic_path

# A scalar field (X0, X1, X2), or a vector as three arrays in VTK (x, y, z) order.
PointArray = Union[np.ndarray, Sequence[np.ndarray]]

_SLAB_BYTES = 1 << 26


def _components(value) -> list:
  if isinstance(value, (tuple, list)):
    if len(value) != 3:
      raise ValueError(f'a vector needs 3 components (x, y, z), got {len(value)}')
    return list(value)
  return [value]


def write_vti(path, point_data: Mapping[str, PointArray], spacing_zyx, origin_zyx=(0.0, 0.0, 0.0),
              vectors: str | None = None, scalars: str | None = None) -> None:
  """Writes (X0, X1, X2) arrays as float32 point data of one ImageData; atomic.

  spacing_zyx and origin_zyx are per array axis (h0, h1, h2); they are written in VTK's (x, y, z) order.
  A vector is given as (vx, vy, vz), i.e. (along axis 2, axis 1, axis 0). vectors / scalars name the active
  arrays ParaView colours and glyphs by default.
  """
  arrays = {name: [np.asarray(c) if not hasattr(c, 'shape') else c for c in _components(v)]
            for name, v in point_data.items()}
  if not arrays:
    raise ValueError('a .vti needs at least one point-data array')
  shape = tuple(int(s) for s in next(iter(arrays.values()))[0].shape)
  for name, comps in arrays.items():
    for c in comps:
      if tuple(c.shape) != shape or len(shape) != 3:
        raise ValueError(f'point data {name!r} has shape {tuple(c.shape)}, expected {shape} (3-D)')
  x2, x1, x0 = shape[2], shape[1], shape[0]
  spacing = ' '.join(repr(float(s)) for s in reversed(tuple(spacing_zyx)))
  origin = ' '.join(repr(float(s)) for s in reversed(tuple(origin_zyx)))
  extent = f'0 {x2 - 1} 0 {x1 - 1} 0 {x0 - 1}'
  n = x0 * x1 * x2
  active = ''.join(f' {k}="{v}"' for k, v in (('Scalars', scalars), ('Vectors', vectors)) if v)
  lines = ['<?xml version="1.0"?>',
           '<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian" header_type="UInt64">',
           f'  <ImageData WholeExtent="{extent}" Origin="{origin}" Spacing="{spacing}" '
           f'Direction="1 0 0 0 1 0 0 0 1">',
           f'    <Piece Extent="{extent}">',
           f'      <PointData{active}>']
  offset = 0
  for name, comps in arrays.items():
    lines.append(f'        <DataArray type="Float32" Name="{name}" NumberOfComponents="{len(comps)}" '
                 f'format="appended" offset="{offset}"/>')
    offset += 8 + 4 * n * len(comps)
  lines += ['      </PointData>', '    </Piece>', '  </ImageData>', '  <AppendedData encoding="raw">', '   _']
  planes = max(1, _SLAB_BYTES // max(1, 12 * x1 * x2))
  with atomic_path(path) as tmp, open(tmp, 'wb') as f:
    f.write('\n'.join(lines).encode('ascii'))
    for name, comps in arrays.items():
      f.write(np.uint64(4 * n * len(comps)).astype('<u8').tobytes())
      for start in range(0, x0, planes):
        block = np.stack([np.asarray(c[start:start + planes], dtype='<f4') for c in comps], axis=-1)
        f.write(np.ascontiguousarray(block).tobytes())
    f.write(b'\n  </AppendedData>\n</VTKFile>\n')
