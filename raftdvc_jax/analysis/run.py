"""One analysis run: strain of a flow, written to a results folder in the requested formats.

Fields are computed slab by slab into memory-mapped scratch files inside the output folder, so memory stays
bounded by one slab whatever the volume; every output is written under a temporary name and the finished
files are moved into place at the end, so a failed run leaves no half-written result behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from raftdvc_jax import atomic
from raftdvc_jax.analysis import aldvc
from raftdvc_jax.analysis import figures
from raftdvc_jax.analysis import metadata as meta
from raftdvc_jax.analysis import nodes
from raftdvc_jax.analysis import spam_tsv
from raftdvc_jax.analysis import strain
from raftdvc_jax.analysis import tiff_stacks
from raftdvc_jax.analysis import vti
from raftdvc_jax.data import io

log = logging.getLogger(__name__)

FORMATS = ('npz', 'vti', 'tsv', 'tif', 'aldvc', 'csv')
DEFAULT_FORMATS = ('npz', 'vti')
# What each format writes into the output folder.
OUTPUTS = {'npz': 'strain.npz', 'vti': 'strain.vti', 'tsv': 'spam.tsv', 'tif': 'tif', 'aldvc': 'aldvc.npz',
           'csv': 'aldvc.csv'}
METADATA = 'metadata.json'
REPORT = 'report.png'
VTI_SCALARS = ('displacement_magnitude', 'volumetric_strain', 'von_mises_strain', 'max_shear_strain',
               'rotation_angle')


def parse_formats(text) -> tuple[str, ...]:
  """'vti,npz,...' -> a tuple of known formats; ValueError naming the unknown ones."""
  items = [t.strip().lower() for t in (text.split(',') if isinstance(text, str) else text) if t.strip()]
  unknown = [t for t in items if t not in FORMATS]
  if unknown:
    raise ValueError(f'--formats: unknown {", ".join(unknown)}; use any of {", ".join(FORMATS)}')
  return tuple(dict.fromkeys(items))


def planned_outputs(formats: Sequence[str], figures_on: bool) -> list[str]:
  """Names written into the output folder (strain.npz and metadata.json always)."""
  names = [OUTPUTS['npz'], METADATA] + [OUTPUTS[f] for f in formats if f != 'npz']
  return names + ([REPORT] if figures_on else [])


def check_output(directory, formats, figures_on: bool, overwrite: bool) -> None:
  """Refuses a folder that is a file, or that already holds a result we would replace, unless overwrite."""
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise ValueError(f'{directory}: the output exists and is not a directory')
  if overwrite or not os.path.isdir(directory):
    return
  present = [n for n in planned_outputs(formats, figures_on) if os.path.exists(os.path.join(directory, n))]
  if present:
    raise ValueError(f'{os.path.join(directory, present[0])} exists; pass --overwrite to replace it')


def _metadata(voxel_size, unit, options, node_spacing, mask, formats, grid, model, provenance) -> dict:
  return meta.build(voxel_size, unit, {
      'window': options.window, 'gradient': 'central differences, one-sided at borders and mask edges'
      if options.window <= 1 else f'masked least-squares plane fit over {options.window}^3 voxels',
      'measure_for_principal_and_von_mises': options.measure, 'node_spacing': list(np.broadcast_to(
          np.asarray(node_spacing, int), (3,)).tolist()), 'mask': mask is not None, 'formats': list(formats),
      'grid': list(grid)}, model=model, provenance=provenance)


def _compute_fields(flow, stage, voxel_size, options, mask, budget_bytes) -> dict:
  """Every strain field, computed slab by slab into memory-mapped .npy files in `stage`."""
  grid = tuple(int(s) for s in flow.shape[1:])
  fields = {k: np.lib.format.open_memmap(os.path.join(stage, f'{k}.npy'), mode='w+', dtype=np.float32, shape=s)
            for k, s in strain.field_shapes(options, grid).items()}

  def sink(start, stop, block):
    for k, v in block.items():
      fields[k][..., start:stop, :, :] = v

  strain.compute(flow, voxel_size, options, mask=mask, sink=sink, budget_bytes=budget_bytes)
  return fields


def _write_vti(path, fields, voxel_size, measure_name) -> None:
  disp, measure = fields['displacement'], fields[measure_name]
  point_data = {'displacement': (disp[2], disp[1], disp[0])}
  point_data.update({name: fields[name] for name in VTI_SCALARS})
  point_data.update({f'principal_strain_{k + 1}': fields['principal_strains'][k] for k in range(3)})
  point_data.update({f'{measure_name}_{tiff_stacks.LETTERS[i]}{tiff_stacks.LETTERS[j]}': measure[i, j]
                     for i in range(3) for j in range(i, 3)})
  vti.write_vti(path, point_data, voxel_size, vectors='displacement', scalars='displacement_magnitude')


def _write_node_formats(staged, stage, flow, fields, formats, options, node_spacing, voxel_size, info) -> None:
  """The node-based peer formats (spam TSV, pyALDVC npz / csv), sampled every node_spacing voxels."""
  grid = tuple(int(s) for s in flow.shape[1:])
  axes = nodes.node_axes(grid, node_spacing)
  ix = np.ix_(*axes)
  flow_nodes = np.stack([np.asarray(flow[c])[ix] for c in range(3)]).astype(np.float64)
  f_nodes = np.asarray(fields['F'][(slice(None), slice(None)) + ix], np.float64)
  flow_nodes[:, ~np.all(np.isfinite(f_nodes), axis=(0, 1))] = np.nan
  f_vox = spam_tsv.voxel_gradient(f_nodes, voxel_size)
  e_nodes = np.asarray(fields[options.measure][(slice(None), slice(None)) + ix], np.float64)
  vm_nodes = np.asarray(fields['von_mises_strain'][ix], np.float64)
  path = lambda fmt: staged.setdefault(OUTPUTS[fmt], os.path.join(stage, OUTPUTS[fmt]))
  if 'tsv' in formats:
    spam_tsv.write_spam_tsv(path('tsv'), axes, flow_nodes, f_vox)
  if 'aldvc' in formats:
    aldvc.write_aldvc_npz(path('aldvc'), axes, flow_nodes, f_vox - np.eye(3)[:, :, None, None, None], e_nodes,
                          vm_nodes, voxel_size, grid, metadata=info)
  if 'csv' in formats:
    aldvc.write_aldvc_csv(path('csv'), axes, flow_nodes, e_nodes, vm_nodes, voxel_size)


def analyze(flow, output_dir, voxel_size=(1.0, 1.0, 1.0), unit: str = 'voxel',
            formats: Sequence[str] = DEFAULT_FORMATS, mask=None,
            options: strain.StrainOptions = strain.StrainOptions(), figures_on: bool = False,
            node_spacing=8, slice_axis: int = 0, slice_index: int | None = None,
            figure_strain: str = 'von_mises_strain', quiver: bool = True, overwrite: bool = False,
            model: str | None = None, provenance: Mapping[str, Any] | None = None,
            budget_bytes: int = 1 << 30) -> dict[str, str]:
  """Computes F and the strain measures of flow (3, X0, X1, X2) (voxels; may be memory-mapped) and writes
  OUTPUT_DIR/strain.npz, metadata.json and each requested format; returns {name: path} of what it wrote.

  voxel_size is per array axis, in `unit`. mask (X0, X1, X2): >= 0.5 = analysed (data.masks); NaN elsewhere.
  Everything is written into a staging folder inside OUTPUT_DIR and moved into place at the end.
  """
  formats = parse_formats(formats)
  voxel_size = meta.parse_voxel_size(voxel_size)
  if figures_on and figure_strain not in strain.SCALARS:
    raise ValueError(f'figure strain {figure_strain!r} is not one of {", ".join(strain.SCALARS)}')
  check_output(output_dir, formats, figures_on, overwrite)
  output_dir = os.path.abspath(os.fspath(output_dir))
  info = _metadata(voxel_size, unit, options, node_spacing, mask, formats, tuple(flow.shape[1:]), model,
                   provenance)
  os.makedirs(output_dir, exist_ok=True)
  stage = tempfile.mkdtemp(prefix='.analysis-', dir=output_dir)
  try:
    fields = _compute_fields(flow, stage, voxel_size, options, mask, budget_bytes)
    staged = {name: os.path.join(stage, name) for name in (OUTPUTS['npz'], METADATA)}
    io.write_npz(staged[OUTPUTS['npz']], dict(fields, voxel_size=np.asarray(voxel_size, np.float64),
                                             metadata=np.array(json.dumps(info, sort_keys=True))))
    log.info('analysis: wrote strain.npz')
    if 'vti' in formats:
      staged[OUTPUTS['vti']] = os.path.join(stage, OUTPUTS['vti'])
      _write_vti(staged[OUTPUTS['vti']], fields, voxel_size, options.measure)
    if {'tsv', 'aldvc', 'csv'} & set(formats):
      _write_node_formats(staged, stage, flow, fields, formats, options, node_spacing, voxel_size, info)
    if 'tif' in formats:
      staged[OUTPUTS['tif']] = os.path.join(stage, OUTPUTS['tif'])
      os.makedirs(staged[OUTPUTS['tif']])
      tiff_stacks.write_stacks(staged[OUTPUTS['tif']], flow, {options.measure: fields[options.measure]},
                               {name: fields[name] for name in VTI_SCALARS})
    if figures_on:
      staged[REPORT] = os.path.join(stage, REPORT)
      figures.slice_report(staged[REPORT], fields, voxel_size, unit, axis=slice_axis, index=slice_index,
                           strain=figure_strain, quiver=quiver, title=(provenance or {}).get('flow', ''))
    with open(staged[METADATA], 'w', encoding='utf-8') as f:
      json.dump(info, f, indent=2, sort_keys=True)
    del fields  # close the maps before the scratch files go
    written = {}
    for name, src in staged.items():
      written[name] = os.path.join(output_dir, name)
      atomic.replace(src, written[name])
    return written
  finally:
    shutil.rmtree(stage, ignore_errors=True)


def analyze_file(flow_path, output_dir, mask_path=None, **kwargs) -> dict[str, str]:
  """analyze() on a flow file (memory-mapped where the format allows) and an optional mask file."""
  flow = io.read_flow(flow_path, mmap=True)
  mask = None
  if mask_path is not None:
    mask = io.read_volume(mask_path, mmap=True)
    if tuple(mask.shape) != tuple(flow.shape[1:]):
      raise ValueError(f'{os.fspath(mask_path)}: mask shape {tuple(mask.shape)} does not match the flow grid '
                       f'{tuple(flow.shape[1:])} of {os.fspath(flow_path)}')
  provenance = dict(kwargs.pop('provenance', None) or {})
  provenance.setdefault('flow', os.path.abspath(os.fspath(flow_path)))
  if mask_path is not None:
    provenance.setdefault('mask', os.path.abspath(os.fspath(mask_path)))
  return analyze(flow, output_dir, mask=mask, provenance=provenance, **kwargs)
