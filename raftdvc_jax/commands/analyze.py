r"""Strain, ParaView file, figures and peer formats from a displacement field.

  raftdvc-analyze --flow FLOW --output DIR [--voxel_size A,B,C] [--unit um] [--formats vti,npz,tsv,tif]
                        [--figures] [--mask M]

FLOW: a flow file (3, X0, X1, X2) in voxels (.npy, .npz member 'flow', .tif, .h5), as infer.py writes it.
Writes DIR/strain.npz (F, green_lagrange, small_strain (3, 3, X0, X1, X2), principal strains, scalar fields,
displacement in physical units, voxel_size and the metadata as JSON) and DIR/metadata.json, plus per
--formats: vti (DIR/strain.vti for ParaView: x = array axis 2, z = axis 0), tsv (DIR/spam.tsv, spam-ldic
style), tif (DIR/tif/ float32 stacks), aldvc (DIR/aldvc.npz) and csv (DIR/aldvc.csv) in pyALDVC's (x, y, z)
order; --figures adds DIR/report.png. docs/analysis.md has the conventions.
"""

from __future__ import annotations

from absl import app
from absl import flags

from raftdvc_jax import cli
from raftdvc_jax.analysis import run
from raftdvc_jax.analysis import strain

_FLOW = flags.DEFINE_string('flow', None, 'Flow file (3, X0, X1, X2), voxels, channel c along array axis c.')
_OUTPUT = flags.DEFINE_string('output', None, 'Results folder (created if absent).')
_VOXEL_SIZE = flags.DEFINE_string('voxel_size', '1,1,1', 'Voxel size per array axis, A,B,C (or one number).')
_UNIT = flags.DEFINE_string('unit', 'voxel', 'Unit of --voxel_size, e.g. um; displacements are given in it.')
_FORMATS = flags.DEFINE_string('formats', ','.join(run.DEFAULT_FORMATS),
                               f'Comma-separated outputs from {{{",".join(run.FORMATS)}}}; strain.npz is '
                               'always written.')
_FIGURES = flags.DEFINE_bool('figures', False, 'Write DIR/report.png: slice panels of |u|, u and strain.')
_MASK = flags.DEFINE_string('mask', None, 'Volume (X0, X1, X2), >= 0.5 where the field is analysed; '
                            'gradients never reach across its edge and fields are NaN outside it.')
_WINDOW = flags.DEFINE_integer('window', 0, 'Gradient: 0 = central differences (one-sided at borders); an '
                               'odd w >= 3 = least-squares plane (Savitzky-Golay) fit over w^3 voxels.',
                               lower_bound=0)
_MEASURE = flags.DEFINE_enum('measure', 'green_lagrange', list(strain.MEASURES),
                             'Tensor whose principal values, von Mises and max shear strain are reported.')
_EULER = flags.DEFINE_bool('euler_almansi', False, 'Also store the Euler-Almansi strain.')
_DIRECTIONS = flags.DEFINE_bool('principal_directions', False, 'Also store principal directions (3, 3, ...).')
_NODE_SPACING = flags.DEFINE_string('node_spacing', '8', 'Node spacing of tsv/aldvc/csv outputs, voxels: N '
                                    'or A,B,C per array axis.')
_SLICE = flags.DEFINE_string('slice', None, 'Figure slice AXIS:INDEX (default: the middle of axis 0).')
_FIGURE_STRAIN = flags.DEFINE_enum('figure_strain', 'von_mises_strain', list(strain.SCALARS),
                                   'Strain scalar shown in the figure.')
_QUIVER = flags.DEFINE_bool('quiver', True, 'Draw in-plane displacement arrows on the |u| panel.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace results already in --output.')
_MODEL = flags.DEFINE_string('model', None, 'Name of the model or checkpoint that made the flow (metadata).')


def _ints(text: str, what: str) -> list[int]:
  try:
    values = [int(t) for t in text.split(',')]
  except ValueError:
    raise ValueError(f'{what} {text!r}: expected integers') from None
  return values


def _slice() -> tuple[int, int | None]:
  if not _SLICE.value:
    return 0, None
  parts = _SLICE.value.split(':')
  if len(parts) != 2:
    raise ValueError(f'--slice {_SLICE.value!r}: expected AXIS:INDEX, e.g. 0:32')
  axis, index = _ints(parts[0], '--slice axis')[0], _ints(parts[1], '--slice index')[0]
  return axis, index


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _FLOW.value or not _OUTPUT.value:
    raise app.UsageError('--flow and --output are required')

  def body():
    spacing = _ints(_NODE_SPACING.value, '--node_spacing')
    if len(spacing) not in (1, 3):
      raise ValueError(f'--node_spacing {_NODE_SPACING.value!r}: expected N or A,B,C')
    axis, index = _slice()
    options = strain.StrainOptions(window=_WINDOW.value, measure=_MEASURE.value,
                                   euler_almansi=_EULER.value, principal_directions=_DIRECTIONS.value)
    return run.analyze_file(
        _FLOW.value, _OUTPUT.value, mask_path=_MASK.value, voxel_size=_VOXEL_SIZE.value, unit=_UNIT.value,
        formats=_FORMATS.value, options=options, figures_on=_FIGURES.value, node_spacing=spacing,
        slice_axis=axis, slice_index=index, figure_strain=_FIGURE_STRAIN.value, quiver=_QUIVER.value,
        overwrite=_OVERWRITE.value, model=_MODEL.value)

  written = cli.run(body, interrupted='error: interrupted; nothing written')
  for name in sorted(written):
    print(written[name])
  return 0


def entry():
  cli.start(main)


if __name__ == '__main__':
  entry()
