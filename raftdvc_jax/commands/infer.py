r"""Estimates the displacement field between a reference and a deformed volume.

  raftdvc-infer --demo                                                       # synthetic pair, EPE, PNG
  raftdvc-infer --checkpoint CKPT --vol0 ref.tif --vol1 def.tif --output flow.npy               # whole volume
  raftdvc-infer --checkpoint CKPT --vol0 ref.tif --vol1 def.tif --output flow.npy --tile 64      # tiled
  raftdvc-infer --checkpoint CKPT --data_dir pairs/ --output_dir flows/                         # every pair
  raftdvc-infer --checkpoint CKPT ... --tile 64 --distributed   # one process per host: tiles split, process 0 writes

(`python infer.py ...` in a checkout is the same.) --checkpoint is a converted or training checkpoint directory, or a
RAFT-DVC / VolRAFT .pth/.pt converted in memory without executing anything in it. Volumes: .npy, .npz,
.tif/.tiff, .h5, or a folder of 2-D .tif slices, memory-mapped where the format allows. The flow is float32
(3, X0, X1, X2), channel c = displacement along array axis c from vol0 to vol1 (vol1(x + u(x)) ~ vol0(x)),
written atomically; an existing file is kept unless --overwrite. docs/inference.md has the details.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from raftdvc_jax import cli
from raftdvc_jax.commands import multiprocess
from raftdvc_jax import weights
from raftdvc_jax.data import io
from raftdvc_jax.data import pairs as pairs_lib
from raftdvc_jax.infer import postprocess
from raftdvc_jax.infer import strategies
from raftdvc_jax.infer import tiling

FORMATS = tuple(s[1:] for s in io.VOLUME_SUFFIXES)
RANDOM = 'random'  # --checkpoint random: the s4 preset with random weights (plumbing checks, --refine's guard)

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Shipped weights by name, a converted or training '
                                  'checkpoint directory, or a RAFT-DVC/VolRAFT .pth/.pt file. Required except '
                                  f'with --demo or --refine; "random" is the s4 arm with random weights. '
                                  f'Shipped: {weights.describe()}.')
_VOL0 = flags.DEFINE_string('vol0', None, 'Reference volume (.npy, .npz, .tif, .h5 or a folder of .tif slices).')
_VOL1 = flags.DEFINE_string('vol1', None, 'Deformed volume, same shape as --vol0.')
_OUTPUT = flags.DEFINE_string('output', None, f'Flow file to write with --vol0/--vol1 ({", ".join(FORMATS)}).')
_MASK = flags.DEFINE_string('mask', None, 'Optional volume, >= 0.5 where the flow is wanted (0/1, 0/255 or soft '
                            'masks): tiles with no voxel inside are skipped and the flow is 0 outside.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Batch mode: a folder of pairs (vol0/ and vol1/ [mask/] '
                                'folders, NAME_vol0.* / NAME_vol1.* files, or NAME.npz holding I1 and I2).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Batch mode: where NAME_flow.<--output_format> go.')
_OUTPUT_FORMAT = flags.DEFINE_enum('output_format', 'npy', FORMATS, 'Batch mode: the flow files\' format.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace existing flow files (else they are refused).')
_STRATEGY = flags.DEFINE_enum('strategy', strategies.DEFAULT, list(strategies.STRATEGIES),
                              'Preset of iterations, overlap, blend and coarse-to-fine (docs/inference.md); '
                              'explicit flags override it.')
_ITERS = flags.DEFINE_integer('iters', None, 'Refinement iterations (default: the --strategy\'s when given, '
                              'else the checkpoint\'s).', lower_bound=1)
_TILE = flags.DEFINE_string('tile', '0', 'Tile size, N or X,Y,Z voxels; 0 (on an axis) = the whole volume.')
_OVERLAP = flags.DEFINE_float('overlap', None, 'Tile overlap as a fraction of the tile, in [0, 1).')
_BLEND = flags.DEFINE_enum('blend', None, list(tiling.BLENDS), 'Weights that blend overlapping tiles.')
_BATCH = flags.DEFINE_integer('batch', None, 'Tiles per device call (default: the largest that fits).',
                              lower_bound=1)
_COARSE = flags.DEFINE_string('coarse_checkpoint', None, 'Coarse-to-fine: a coarser arm (e.g. s8) run first; '
                              'its flow starts the --checkpoint arm.')
_REFINE = flags.DEFINE_bool('refine', False, 'Refine the flow by subset IC-GN (docs/accuracy.md); without '
                             '--checkpoint it starts from an integer search. Writes FLOW_nodes.npz too.')
_SUBSET = flags.DEFINE_integer('subset', 16, 'Refinement subset size (SUBSET + 1 voxels a side).', lower_bound=4)
_NODE_STEP = flags.DEFINE_integer('node_step', 4, 'Refinement node spacing, voxels.', lower_bound=1)
_SHAPE_ORDER = flags.DEFINE_enum('shape_order', '1', ['1', '2'], 'Refinement shape functions: 1 affine, 2 quadratic.')
_SEARCH_REACH = flags.DEFINE_integer('search_reach', None, 'Refinement integer search reach, voxels. Default: '
                                     'without --checkpoint 8, widened to 16 and 24 where matches are weak; with '
                                     'one, 2 around the network\'s guess, falling back to that search where the '
                                     'guess is poor (FLOW_nodes.npz: fell_back).', lower_bound=0)
_STRAIN = flags.DEFINE_bool('strain', False, 'Also write strain and exports to FLOW_strain/ (docs/analysis.md).')
_VOXEL_SIZE = flags.DEFINE_string('voxel_size', '1,1,1', 'With --strain: voxel size per array axis, A,B,C.')
_UNIT = flags.DEFINE_string('unit', 'voxel', 'With --strain: unit of --voxel_size (e.g. um).')
_FORMATS = flags.DEFINE_string('formats', 'npz,vti', 'With --strain: formats (npz,vti,tsv,tif,aldvc,csv).')
_FIGURES = flags.DEFINE_bool('figures', False, 'With --strain: a PNG report of slices.')
_CORRELATION = flags.DEFINE_enum('correlation', 'auto', ['auto', 'allpairs', 'local'], 'Correlation: all-pairs '
                                  'pyramid (fastest), or window by window (same result, memory-light); auto = '
                                  'all-pairs when a tile fits the device memory with it, else local.')
LOOKUPS = ('auto', 'reference', 'separable', 'slab')  # model.corr.LOOKUP_CHOICES (not imported: --help stays light)
_LOOKUP = flags.DEFINE_enum('lookup', 'auto', list(LOOKUPS), 'Formula that reads the all-pairs pyramid (all give the '
                            'same numbers; auto picks the fastest per level, model/corr.py).')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show progress bars on stderr.')
_DEMO = flags.DEFINE_bool('demo', False, 'Estimate the flow of a synthetic bead pair with a known field, print '
                          'the end-point error and write a PNG of central slices.')
_DEMO_SIZE = flags.DEFINE_integer('demo_size', 64, 'Side of the demo volume in voxels.', lower_bound=8)
_DEMO_OUTPUT = flags.DEFINE_string('demo_output', 'demo_flow.png', 'Where the demo writes its figure (.png).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the demo pair (and of the random weights without --checkpoint).')
FLAGS = flags.FLAGS


def say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def mode() -> str:
  """Which of the three modes the flags ask for (single, batch, demo); refuses mixtures and gaps."""
  given = lambda names: [f'--{n}' for n in names if FLAGS[n].value is not None]
  single, batch = given(('vol0', 'vol1', 'output')), given(('data_dir', 'output_dir'))
  if multiprocess.requested() and (_DEMO.value or _CHECKPOINT.value is None or _COARSE.value):
    raise ValueError('--distributed splits the tiles of --checkpoint over processes; it does not run with '
                     '--demo, --coarse_checkpoint or --refine without --checkpoint')
  if _DEMO.value:
    if single + batch + given(('mask',)):
      raise ValueError(f'--demo makes its own volumes; drop {", ".join(single + batch + given(("mask",)))}')
    return 'demo'
  if _CHECKPOINT.value is None and not _REFINE.value:
    raise ValueError('--checkpoint is required (or --refine, which starts from an integer search; or --demo)')
  if single and batch:
    raise ValueError('give either --vol0/--vol1/--output or --data_dir/--output_dir, not both '
                     f'({", ".join(single + batch)})')
  want = ('data_dir', 'output_dir') if batch else ('vol0', 'vol1', 'output')
  missing = [f'--{n}' for n in want if FLAGS[n].value is None]
  if missing and batch:
    raise ValueError(f'batch mode needs {" and ".join(missing)}')
  if missing:
    raise ValueError(f'missing {", ".join(missing)} (or use --data_dir/--output_dir, or --demo)')
  if batch and _MASK.value:
    raise ValueError('--mask names one volume; in batch mode put masks in DATA_DIR/mask/NAME.* or NAME_mask.*')
  return 'batch' if batch else 'single'


def pipeline(estimator=None, label=None, hooks=()):
  """The Pipeline the flags describe; loads --checkpoint (unless given an estimator) and --coarse_checkpoint."""
  from raftdvc_jax.infer.estimator import load  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer.pipeline import Pipeline  # pylint: disable=import-outside-toplevel
  if estimator is None and _CHECKPOINT.value == RANDOM and not os.path.exists(RANDOM):
    from raftdvc_jax.infer.demo import random_estimator  # pylint: disable=import-outside-toplevel
    estimator, label = random_estimator(_SEED.value, _CORRELATION.value, _LOOKUP.value), RANDOM
  if estimator is None:
    estimator, label = load(_CHECKPOINT.value, correlation=_CORRELATION.value, lookup=_LOOKUP.value), _CHECKPOINT.value
  say(f'fine arm {label}: {estimator.config.describe()}')
  coarse = load(_COARSE.value) if _COARSE.value else None
  if coarse is not None:
    say(f'coarse arm {_COARSE.value}: {coarse.config.describe()}')
  iters = _ITERS.value if _ITERS.value or FLAGS['strategy'].present else estimator.config.iters
  tile, overlap = estimator.tiling(_TILE.value if FLAGS['tile'].present else None, _OVERLAP.value)
  if not FLAGS['tile'].present and estimator.recommended_tiling():  # e.g. weights trained on small crops
    say(f'tiles of {tile} (overlap {overlap}): what these weights were trained for; --tile overrides')
  pipe = Pipeline(estimator, coarse, tile, _STRATEGY.value, iters, overlap, _BLEND.value,
                  _BATCH.value, hooks, (label, _COARSE.value or ''), FLAGS.distributed)
  if pipe.settings.coarse_to_fine and coarse is None:
    say(f'note: --strategy {pipe.settings.name} runs a coarse arm first when --coarse_checkpoint names one')
  say(pipe.describe() + '; the first run of a tile shape compiles')
  return pipe


def outputs(which: str, pairs, hooks=()) -> list[str]:
  """Every file this run will write, checked (writable, format, not an input, not existing) before compute."""
  if which == 'demo':
    if os.path.splitext(_DEMO_OUTPUT.value)[1].lower() != '.png':
      raise ValueError(f'{_DEMO_OUTPUT.value}: --demo_output must be a .png')
    cli.check_writable(_DEMO_OUTPUT.value, 'figure')
    return [_DEMO_OUTPUT.value]
  from raftdvc_jax.infer.pipeline import output_paths  # pylint: disable=import-outside-toplevel
  paths = [_OUTPUT.value] if which == 'single' else output_paths(pairs, _OUTPUT_DIR.value, _OUTPUT_FORMAT.value)
  for path, pair in zip(paths, pairs):
    for src in pair.sources.values():
      if os.path.exists(path) and os.path.samefile(src.path, path):
        raise ValueError(f'{path}: {"--output" if which == "single" else "the flow of " + pair.name} would '
                         'overwrite an input')
    cli.check_writable(path, 'flow file')
    cli.check_output_format(path)
    cli.check_new_output(path, _OVERWRITE.value, 'flow file')
    for extra in (p for h in hooks for p in h.outputs(path)):
      cli.check_new_output(extra, _OVERWRITE.value, 'output')
  return paths


def postprocess_hooks(flags) -> list:
  """The post-processing raftdvc-infer's flags ask for, in order: refinement, then strain."""
  f = lambda name: flags[name].value
  out = []
  if f('refine'):
    out.append(postprocess.RefineHook(f('overwrite'), subset=f('subset'), step=f('node_step'),
                                      order=int(f('shape_order')), search_reach=f('search_reach')))
  if f('strain'):
    out.append(postprocess.StrainHook(f('voxel_size'), f('unit'), f('formats'), f('figures'), f('overwrite'),
                                      {'vol0': f('vol0'), 'vol1': f('vol1'), 'checkpoint': f('checkpoint')}))
  return out


def run() -> None:
  which = mode()
  tiling.parse_tile(_TILE.value)
  strategies.resolve(_STRATEGY.value, overlap=_OVERLAP.value)
  for flag, path in (('checkpoint', _CHECKPOINT.value), ('coarse_checkpoint', _COARSE.value)):
    if path is not None and not (flag == 'checkpoint' and path == RANDOM):
      weights.check(path)  # a path, or the name of shipped weights (s4-starter); random is --checkpoint's
  for path in (_VOL0.value, _VOL1.value, _MASK.value, _DATA_DIR.value):
    if path is not None and not os.path.exists(path):
      raise FileNotFoundError(f'{path}: no such file or directory')
  if which == 'single':
    sources = {'vol0': _VOL0.value, 'vol1': _VOL1.value, 'mask': _MASK.value}
    pairs = [pairs_lib.Pair('pair', {k: pairs_lib.Source(v) for k, v in sources.items() if v})]
  elif which == 'batch':
    cli.check_writable(_OUTPUT_DIR.value, '--output_dir', folder=True)
    if not os.path.isdir(_DATA_DIR.value):
      raise ValueError(f'{_DATA_DIR.value}: --data_dir is not a directory')
    pairs = pairs_lib.find_pairs(_DATA_DIR.value)
  else:
    pairs = []
  hooks = postprocess_hooks(FLAGS)  # built once: bad --voxel_size/--formats fail here, before any compute
  paths = outputs(which, pairs, hooks)
  for pair in pairs:  # every pair is read and checked before the first estimate: no failure after hours
    pairs_lib.read_pair(pair)
  lead = True
  if multiprocess.start():  # before anything else uses JAX
    import jax  # pylint: disable=import-outside-toplevel
    lead = jax.process_index() == 0
    say(f'process {jax.process_index()} of {jax.process_count()}; process 0 writes the flow')
  from raftdvc_jax import runtime  # pylint: disable=import-outside-toplevel
  runtime.enable_compilation_cache()
  if which == 'demo':
    from raftdvc_jax.infer import demo  # pylint: disable=import-outside-toplevel
    print(demo.run_cli(pipeline, _CHECKPOINT.value, _DEMO_OUTPUT.value, _DEMO_SIZE.value, _SEED.value,
                       _PROGRESS.value), flush=True)  # the demo's result, on stdout
    return
  from raftdvc_jax.infer.pipeline import run_pairs  # pylint: disable=import-outside-toplevel
  if _CHECKPOINT.value is None:  # --refine alone: no network, the refinement starts from an integer search
    say('no --checkpoint: the refinement starts from an integer search')
    postprocess.run_without_network(pairs, paths, hooks, say)
    return
  run_pairs(pipeline(hooks=hooks), pairs, paths, _PROGRESS.value and lead)


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_logs()
  cli.show_info()
  cli.run(run, 'error: interrupted; nothing written for the pair in progress')


def entry():
  cli.start(main)


if __name__ == '__main__':
  entry()
