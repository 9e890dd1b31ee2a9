"""Slice panels of a displacement and strain result: one PNG report per run (matplotlib, no display)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from raftdvc_jax.atomic import atomic_path

LETTERS = 'zyx'  # array axes (0, 1, 2) in VTK/pyALDVC terms
UNITLESS = {'rotation_angle': 'deg'}


def _slice(a, axis: int, index: int):
  return np.asarray(np.take(a, index, axis=a.ndim - 3 + axis), np.float64)


def _label(name: str) -> str:
  return name.replace('_', ' ')


def slice_report(path, fields: Mapping[str, np.ndarray], voxel_size, unit: str, axis: int = 0,
                 index: int | None = None, strain: str = 'von_mises_strain', quiver: bool = True,
                 title: str = '') -> str:
  """Writes a PNG of one slice: |u|, u along each array axis (physical units), the chosen strain scalar and
  the volumetric strain, with colour bars in their units and the slice named by axis and index.

  fields: 'displacement' (3, X0, X1, X2) physical, 'displacement_magnitude', and the strain scalars, as
  returned by strain.compute (memory-mapped arrays are read one slice at a time).
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  disp = fields['displacement']
  grid = tuple(disp.shape[1:])
  if axis not in (0, 1, 2):
    raise ValueError(f'the slice axis must be 0, 1 or 2, got {axis}')
  index = grid[axis] // 2 if index is None else int(index)
  if not 0 <= index < grid[axis]:
    raise ValueError(f'slice index {index} is outside axis {axis} of size {grid[axis]}')
  if strain not in fields:
    raise ValueError(f'no strain field {strain!r}; have {", ".join(sorted(fields))}')
  rows, cols = [a for a in range(3) if a != axis]
  h = [float(v) for v in voxel_size]
  extent = (-0.5 * h[cols], (grid[cols] - 0.5) * h[cols], (grid[rows] - 0.5) * h[rows], -0.5 * h[rows])
  panels = [('|u|', _slice(fields['displacement_magnitude'], axis, index), unit, 'viridis')]
  for c in range(3):
    panels.append((f'u{c} (along axis {c}, {LETTERS[c]})', _slice(disp[c], axis, index), unit, 'RdBu_r'))
  extra = [strain] + (['volumetric_strain'] if strain != 'volumetric_strain' else [])
  for name in extra:
    panels.append((_label(name), _slice(fields[name], axis, index), UNITLESS.get(name, '-'), 'magma'))

  fig, axes = plt.subplots(2, 3, figsize=(13.5, 8.2), constrained_layout=True)
  for ax, (name, data, units, cmap) in zip(axes.ravel(), panels):
    finite = data[np.isfinite(data)]
    if cmap == 'RdBu_r':  # signed: symmetric limits so 0 is white
      lim = float(np.max(np.abs(finite))) if finite.size else 1.0
      vmin, vmax = -(lim or 1.0), (lim or 1.0)
    else:
      vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
      if vmin == vmax:
        vmin, vmax = vmin - 0.5 * (abs(vmin) or 1.0), vmax + 0.5 * (abs(vmax) or 1.0)
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, extent=extent, interpolation='nearest')
    ax.set_title(name)
    ax.set_xlabel(f'axis {cols} ({LETTERS[cols]}) [{unit}]')
    ax.set_ylabel(f'axis {rows} ({LETTERS[rows]}) [{unit}]')
    fig.colorbar(im, ax=ax, shrink=0.85, label=f'[{units}]')
  if quiver:
    _arrows(axes.ravel()[0], _slice(disp[cols], axis, index), _slice(disp[rows], axis, index), h[cols], h[rows],
            unit)
  fig.suptitle(f'{title + ": " if title else ""}slice axis {axis} ({LETTERS[axis]}) = {index} '
               f'(of {grid[axis]}), voxel size {"x".join(f"{v:g}" for v in h)} {unit}; white: no data (mask)')
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110, format='png')
  plt.close(fig)
  return str(path)


def _arrows(ax, u_cols, u_rows, h_cols: float, h_rows: float, unit: str, count: int = 16) -> None:
  """In-plane displacement arrows on about count x count points, scaled so the longest is one step long."""
  n_r, n_c = u_cols.shape
  step = max(1, max(n_r, n_c) // count)
  r = np.arange(step // 2, n_r, step)
  c = np.arange(step // 2, n_c, step)
  rr, cc = np.meshgrid(r, c, indexing='ij')
  du, dv = u_cols[rr, cc], u_rows[rr, cc]
  length = np.sqrt(du ** 2 + dv ** 2)
  longest = float(np.nanmax(length)) if np.isfinite(length).any() else 0.0
  if longest <= 0:
    return
  gap = step * min(h_cols, h_rows)
  # y data grows downward (rows), so a positive row displacement points down, as in the image.
  ax.quiver(cc * h_cols, rr * h_rows, du, dv, angles='xy', scale_units='xy', scale=longest / gap,
            color='white', width=0.004)
  ax.text(0.01, 0.01, f'arrows: in-plane u, longest {longest:.3g} {unit}', transform=ax.transAxes,
          color='white', fontsize=8)
