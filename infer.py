r"""Estimates the displacement field between a reference and a deformed volume.

  python infer.py --demo                                                     # synthetic pair, EPE, PNG
  python infer.py --checkpoint CKPT --vol0 ref.tif --vol1 def.tif --output flow.npy            # whole volume
  python infer.py --checkpoint CKPT --vol0 ref.tif --vol1 def.tif --output flow.npy --tile 64   # tiled
  python infer.py --checkpoint CKPT --data_dir pairs/ --output_dir flows/                      # every pair

--checkpoint is a converted or training checkpoint directory, or a RAFT-DVC / VolRAFT .pth/.pt converted in
memory without executing anything in it. Volumes: .npy, .npz, .tif/.tiff, .h5, or a folder of 2-D .tif slices,
memory-mapped where the format allows, so only the tiles being estimated are in memory. The flow is float32
(3, X0, X1, X2), channel c = displacement along array axis c from vol0 to vol1 (vol1(x + u(x)) ~ vol0(x)),
written through a temporary file renamed into place. docs/inference.md has the details and advice.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

try:
  import raftdvc_jax
except ImportError:  # run from a checkout without `pip install -e .`
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import raftdvc_jax  # pylint: disable=g-import-not-at-top

# pylint: disable=g-import-not-at-top
from raftdvc_jax import cli
from raftdvc_jax.data import io
from raftdvc_jax.infer import coarse_to_fine
from raftdvc_jax.infer import strategies
from raftdvc_jax.infer import tiling
# pylint: enable=g-import-not-at-top

FORMATS = tuple(s[1:] for s in io.VOLUME_SUFFIXES)

# Inputs and outputs.
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'Converted or training checkpoint directory, or a RAFT-DVC/VolRAFT .pth/.pt file. '
    'Required except with --demo, which then runs untrained random weights.')
_VOL0 = flags.DEFINE_string('vol0', None, 'Reference volume (.npy, .npz, .tif, .h5 or a folder of .tif slices).')
_VOL1 = flags.DEFINE_string('vol1', None, 'Deformed volume, same shape as --vol0.')
_OUTPUT = flags.DEFINE_string('output', None, f'Flow file to write with --vol0/--vol1 ({", ".join(FORMATS)}).')
_MASK = flags.DEFINE_string('mask', None, 'Optional volume, nonzero where the flow is wanted: tiles holding no '
                            'mask voxel are skipped and the flow is 0 outside the mask.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'Batch mode: a folder with vol0/ and vol1/ of matching names (and an optional mask/), or '
    'NAME_vol0.* / NAME_vol1.* (/ NAME_mask.*) files, or NAME.npz pair files holding I1 and I2.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Batch mode: where NAME_flow.<--output_format> go.')
_OUTPUT_FORMAT = flags.DEFINE_enum('output_format', 'npy', FORMATS, 'Batch mode: the flow files\' format.')
# The estimate.
_STRATEGY = flags.DEFINE_enum(
    'strategy', strategies.DEFAULT, list(strategies.STRATEGIES),
    'Preset of iterations, overlap, blend and coarse-to-fine: fast (8 iterations, overlap 0.25, cosine), '
    'balanced (12, 0.5, gaussian), accurate (24, 0.5, gaussian, coarse arm first). Explicit flags override it.')
_ITERS = flags.DEFINE_integer('iters', None, 'Refinement iterations (default: the --strategy\'s when given, '
                              'else the checkpoint\'s).', lower_bound=1)
_TILE = flags.DEFINE_string('tile', '0', 'Tile size, N or X,Y,Z voxels; 0 (on an axis) = the whole volume. A '
                            'volume no larger than the tile runs as one whole-volume pass.')
_OVERLAP = flags.DEFINE_float('overlap', None, 'Overlap of neighbouring tiles as a fraction of the tile, in '
                              '[0, 1) (default: the --strategy\'s, 0.5).')
_BLEND = flags.DEFINE_enum('blend', None, list(tiling.BLENDS),
                           'Weights that blend overlapping tiles (default: the --strategy\'s, gaussian).')
_BATCH = flags.DEFINE_integer('batch', None, 'Tiles per device call (default: the largest that fits the '
                              'device; one per device on CPU).', lower_bound=1)
_COARSE = flags.DEFINE_string(
    'coarse_checkpoint', None, 'Coarse-to-fine: a coarser arm (e.g. s8) run first; its flow starts the '
    '--checkpoint arm (e.g. s4 or s2). Turns coarse-to-fine on under any --strategy.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar on stderr.')
# The demo.
_DEMO = flags.DEFINE_bool('demo', False, 'Estimate the flow of a synthetic bead pair with a known field, print '
                          'the end-point error and write a PNG of central slices. Takes no volumes.')
_DEMO_SIZE = flags.DEFINE_integer('demo_size', 64, 'Side of the demo volume in voxels.', lower_bound=8)
_DEMO_OUTPUT = flags.DEFINE_string('demo_output', 'demo_flow.png', 'Where the demo writes its figure (.png).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the demo pair (and of the random weights without '
                             '--checkpoint).')

FLAGS = flags.FLAGS


def _say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Checks before any work.


def check_writable(path: str, what: str = 'output', folder: bool = False) -> None:
  """Refuses an output path that could not be written: a directory (or, for a folder, a file), or a path
  under a file or a read-only folder."""
  path = os.path.abspath(path)
  if folder and os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'{path}: the {what} is not a directory')
  if not folder and os.path.isdir(path):
    raise ValueError(f'{path}: the {what} is a directory')
  parent = path if folder else os.path.dirname(path)
  while not os.path.exists(parent):  # atomic_path creates missing folders; the first existing one must allow it
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f'{path}: cannot write the {what}: {parent} is not a directory')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f'{path}: cannot write the {what}: {parent} is not writable')


def check_flow_suffix(path: str) -> None:
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in io.VOLUME_SUFFIXES:
    raise ValueError(f'{path}: cannot write a flow as {suffix or "a file without suffix"!r}; '
                     f'use one of {", ".join(io.VOLUME_SUFFIXES)}')


def mode() -> str:
  """Which of the three modes the flags ask for (single, batch, demo); refuses mixtures and gaps."""
  single = [f'--{n}' for n in ('vol0', 'vol1', 'output') if FLAGS[n].value is not None]
  batch = [f'--{n}' for n in ('data_dir', 'output_dir') if FLAGS[n].value is not None]
  if _DEMO.value:
    extra = single + batch + (['--mask'] if _MASK.value else [])
    if extra:
      raise ValueError(f'--demo makes its own volumes; drop {", ".join(extra)}')
    return 'demo'
  if _CHECKPOINT.value is None:
    raise ValueError('--checkpoint is required (or run --demo)')
  if single and batch:
    raise ValueError(f'give either --vol0/--vol1/--output or --data_dir/--output_dir, not both '
                     f'({", ".join(single + batch)})')
  if batch:
    missing = [f'--{n}' for n in ('data_dir', 'output_dir') if FLAGS[n].value is None]
    if missing:
      raise ValueError(f'batch mode needs {" and ".join(missing)}')
    if _MASK.value:
      raise ValueError('--mask names one volume; in batch mode put masks in DATA_DIR/mask/NAME.* or NAME_mask.*')
    return 'batch'
  missing = [f'--{n}' for n in ('vol0', 'vol1', 'output') if FLAGS[n].value is None]
  if missing:
    raise ValueError(f'missing {", ".join(missing)} (or use --data_dir/--output_dir, or --demo)')
  return 'single'


def check_flags() -> str:
  """Validates what can be checked before any work is done; returns the mode."""
  which = mode()
  tiling.parse_tile(_TILE.value)
  if _OVERLAP.value is not None:
    tiling.check_overlap(_OVERLAP.value)
  inputs = [p for p in (_CHECKPOINT.value, _COARSE.value, _VOL0.value, _VOL1.value, _MASK.value, _DATA_DIR.value)
            if p is not None]
  for path in inputs:
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path}: no such file or directory')
  if which == 'single':
    out = _OUTPUT.value
    check_flow_suffix(out)
    check_writable(out)
    for path in inputs:
      if os.path.exists(out) and os.path.samefile(path, out):
        raise ValueError(f'{out}: --output would overwrite an input')
  elif which == 'batch':
    if not os.path.isdir(_DATA_DIR.value):
      raise ValueError(f'{_DATA_DIR.value}: --data_dir is not a directory')
    check_writable(_OUTPUT_DIR.value, '--output_dir', folder=True)
  else:
    if os.path.splitext(_DEMO_OUTPUT.value)[1].lower() != '.png':
      raise ValueError(f'{_DEMO_OUTPUT.value}: --demo_output must be a .png')
    check_writable(_DEMO_OUTPUT.value, 'figure')
  return which


# ---------------------------------------------------------------------------------------------------------
# Finding and reading pairs.


class Source:
  """A volume in a file (or one array of a pair file): where it is, how it is named in messages."""

  def __init__(self, path: str, key: str | None = None):
    self.path, self.key = path, key

  def __str__(self) -> str:
    return self.path if self.key is None else f'{self.path}[{self.key}]'

  def read(self):
    """The volume, memory-mapped or lazy where the format allows; not yet scanned for NaN/inf."""
    return io.read_volume(self.path, mmap=True, key=self.key, check=False)


def _volumes_by_name(folder: str) -> dict[str, str]:
  """Volume files (by suffix) and slice folders in a folder, by name without suffix; hidden ones skipped."""
  found: dict[str, str] = {}
  for entry in sorted(os.listdir(folder)):
    path = os.path.join(folder, entry)
    stem, suffix = os.path.splitext(entry)
    if entry.startswith('.'):
      continue
    if os.path.isdir(path):
      stem = entry
    elif suffix.lower() not in io.VOLUME_SUFFIXES:
      continue
    if stem in found:
      raise ValueError(f'{path}: two volumes named {stem!r} ({os.path.basename(found[stem])} and {entry})')
    found[stem] = path
  return found


def _is_pair_file(path: str) -> bool:
  if not path.lower().endswith('.npz'):
    return False
  import zipfile  # pylint: disable=import-outside-toplevel
  try:
    with zipfile.ZipFile(path) as zf:
      names = set(zf.namelist())
  except (OSError, zipfile.BadZipFile):
    return False
  return {'I1.npy', 'I2.npy'} <= names


def find_pairs(data_dir: str) -> list[tuple[str, Source, Source, Source | None]]:
  """(name, vol0, vol1, mask or None) of every pair in a batch folder; refuses unmatched names and no pairs."""
  sub = {k: os.path.join(data_dir, k) for k in ('vol0', 'vol1', 'mask')}
  pairs_files: dict[str, str] = {}
  if os.path.isdir(sub['vol0']) or os.path.isdir(sub['vol1']):
    for k in ('vol0', 'vol1'):
      if not os.path.isdir(sub[k]):
        raise ValueError(f'{data_dir}: has {"vol1" if k == "vol0" else "vol0"}/ but no {k}/ folder')
    vol0, vol1 = _volumes_by_name(sub['vol0']), _volumes_by_name(sub['vol1'])
    masks = _volumes_by_name(sub['mask']) if os.path.isdir(sub['mask']) else {}
  else:
    entries = _volumes_by_name(data_dir)
    vol0, vol1, masks = {}, {}, {}
    for stem, path in entries.items():
      if stem.endswith('_flow') or (os.path.isdir(path) and not stem.endswith(('_vol0', '_vol1', '_mask'))):
        continue  # earlier results (--output_dir may be --data_dir) and folders that are not slice stacks
      for suffix, table in (('_vol0', vol0), ('_vol1', vol1), ('_mask', masks)):
        if stem.endswith(suffix) and len(stem) > len(suffix):
          table[stem[:-len(suffix)]] = path
          break
      else:
        if not _is_pair_file(path):
          raise ValueError(f'{path}: not part of a pair; name pairs NAME_vol0.* and NAME_vol1.*, put them in '
                           'vol0/ and vol1/ folders, or store I1 and I2 in one NAME.npz')
        pairs_files[stem] = path
  unmatched = sorted(set(vol0) ^ set(vol1))
  if unmatched:
    shown = ', '.join(os.path.relpath((vol0 if n in vol0 else vol1)[n], data_dir) for n in unmatched[:5])
    more = f' and {len(unmatched) - 5} more' if len(unmatched) > 5 else ''
    raise ValueError(f'{data_dir}: {len(unmatched)} volume(s) without a partner of the same name: {shown}{more}')
  stray = sorted(set(masks) - set(vol0) - set(pairs_files))
  if stray:
    raise ValueError(f'{masks[stray[0]]}: a mask without a volume pair named {stray[0]!r}')
  clash = sorted(set(vol0) & set(pairs_files))
  if clash:
    raise ValueError(f'{pairs_files[clash[0]]}: a pair named {clash[0]!r} is also given as separate files')
  pairs = [(n, Source(vol0[n]), Source(vol1[n]), Source(masks[n]) if n in masks else None) for n in vol0]
  pairs += [(n, Source(p, 'I1'), Source(p, 'I2'), Source(masks[n]) if n in masks else None)
            for n, p in pairs_files.items()]
  if not pairs:
    raise ValueError(f'{data_dir}: no volume pairs found (expected vol0/ and vol1/ folders with matching names, '
                     'NAME_vol0.* and NAME_vol1.* files, or NAME.npz files holding I1 and I2)')
  return sorted(pairs, key=lambda p: p[0])


def read_inputs(src0: Source, src1: Source, src_mask: Source | None):
  """The volumes (and mask) of a pair, formats and shapes checked; vol0/vol1 not yet scanned for NaN/inf."""
  vol0, vol1 = src0.read(), src1.read()
  if tuple(vol1.shape) != tuple(vol0.shape):
    raise ValueError(f'{src1}: shape {tuple(vol1.shape)} does not match {src0} {tuple(vol0.shape)}')
  mask = None
  if src_mask is not None:
    mask = io.read_volume(src_mask.path, mmap=True, key=src_mask.key, check=True)
    if tuple(mask.shape) != tuple(vol0.shape):
      raise ValueError(f'{src_mask}: mask shape {tuple(mask.shape)} does not match {src0} {tuple(vol0.shape)}')
  return vol0, vol1, mask


# ---------------------------------------------------------------------------------------------------------
# Estimation.


class Arms:
  """The fine arm (--checkpoint) and the optional coarse arm, with the resolved settings."""

  def __init__(self, fine, coarse, settings: strategies.Strategy, labels: tuple[str, str]):
    self.fine, self.coarse, self.settings, self.labels = fine, coarse, settings, labels

  def check(self, shape, where: str, mask=None) -> None:
    """Refuses, before anything runs, a volume or tile either arm cannot take or a tile that does not fit."""
    tile = tiling.parse_tile(_TILE.value)
    for est, label in ((self.coarse, self.labels[1]), (self.fine, self.labels[0])):
      if est is None:
        continue
      c = est.config
      small = [t for t in tile if 0 < t < c.min_size]
      if small:
        raise ValueError(f'--tile {_TILE.value}: smaller than the {label} network takes: every side must be >= '
                         f'{c.min_size} (stride {c.stride}, {c.corr_levels} pyramid levels)')
      if min(shape) < c.min_size:
        raise ValueError(f'{where}: volume {tuple(shape)} is too small for the {label} network: every side must '
                         f'be >= {c.min_size} (stride {c.stride}, {c.corr_levels} pyramid levels)')
      est.plan(shape, tile, self.settings.overlap, mask, _BATCH.value)

  def estimate(self, vol0, vol1, mask=None, progress: bool = False):
    """(flow, [summaries]): the coarse arm first when there is one, its flow starting the fine arm."""
    s = self.settings
    kwargs = dict(tile=_TILE.value, overlap=s.overlap, blend=s.blend, batch=_BATCH.value, iters=s.iters,
                  mask=mask, progress=progress, return_summary=True)
    summaries = []
    init_fn = None
    if self.coarse is not None:
      if progress:
        _say(f'coarse arm ({self.labels[1]}):')
      coarse, summary = self.coarse.tiled(vol0, vol1, **kwargs)
      summaries.append(summary)
      init_fn = coarse_to_fine.flow_init_fn(coarse, self.fine.config.stride)
      if progress:
        _say(f'fine arm ({self.labels[0]}):')
    flow, summary = self.fine.tiled(vol0, vol1, flow_init_fn=init_fn, **kwargs)
    summaries.append(summary)
    return flow, summaries


def _describe(config) -> str:
  return (f'stride {config.stride} ({config.encoder_type} encoder, {config.corr_levels} levels, radius '
          f'{config.corr_radius}{", VolRAFT" if config.volraft else ""})')


def settings_for(config) -> strategies.Strategy:
  """The --strategy preset with explicit flags on top; without --strategy, the checkpoint's iterations."""
  iters = _ITERS.value
  if iters is None and not FLAGS['strategy'].present:
    iters = config.iters
  return strategies.resolve(_STRATEGY.value, iters=iters, overlap=_OVERLAP.value, blend=_BLEND.value,
                            coarse_to_fine=True if _COARSE.value else None)


def load_arms(estimator=None, label: str | None = None) -> Arms:
  """Loads --checkpoint (unless an estimator is given) and --coarse_checkpoint; resolves the settings."""
  if estimator is None:
    estimator = raftdvc_jax.load(_CHECKPOINT.value)
    label = _CHECKPOINT.value
  s = settings_for(estimator.config)
  _say(f'fine arm {label}: {_describe(estimator.config)}')
  coarse = None
  if _COARSE.value:
    coarse = raftdvc_jax.load(_COARSE.value)
    _say(f'coarse arm {_COARSE.value}: {_describe(coarse.config)}')
    if coarse.config.stride < estimator.config.stride:
      _say(f'note: the coarse arm\'s stride {coarse.config.stride} is finer than the fine arm\'s '
           f'{estimator.config.stride}; coarse-to-fine helps when the first arm is the coarser one')
  elif s.coarse_to_fine:
    _say(f'note: --strategy {s.name} runs a coarse arm first when --coarse_checkpoint names one (e.g. an s8 '
         'arm); without it, only its iterations, overlap and blend apply')
  tile = tiling.parse_tile(_TILE.value)
  where = 'the whole volume' if not any(tile) else f'tiles of {"x".join(str(t) if t else "all" for t in tile)}'
  _say(f'{s.iters} iterations on {where}, overlap {s.overlap}, {s.blend} blend'
       f'{", coarse-to-fine" if coarse is not None else ""} (strategy {s.name}); the first run of a tile '
       'shape compiles')
  return Arms(estimator, coarse, s, (label, _COARSE.value or ''))


def _name_files(e: Exception, names: dict[str, object]) -> ValueError:
  """The runner names volumes vol0/vol1/mask; say which files they are."""
  message = str(e)
  for key, source in names.items():
    if source is not None and message.startswith(f'{key}:'):
      return ValueError(f'{source}:{message[len(key) + 1:]}')
  shown = ', '.join(str(s) for k, s in names.items() if s is not None and k != 'mask')
  return ValueError(f'{shown}: {message}')


def max_magnitude(flow, rows: int = 16) -> float:
  """The largest |u| of a flow (3, X0, X1, X2), a few planes at a time (it may be a memory map)."""
  best = 0.0
  for start in range(0, flow.shape[1], rows):
    block = np.asarray(flow[:, start:start + rows])
    best = max(best, float(np.sqrt((block * block).sum(0)).max()))
  return best


def run_pair(arms: Arms, src0: Source, src1: Source, src_mask: Source | None, output: str,
             progress: bool) -> tuple[dict, list[dict]]:
  """Reads, checks, estimates and writes one pair; (the fine arm's summary with totals, every arm's)."""
  t0 = time.perf_counter()
  vol0, vol1, mask = read_inputs(src0, src1, src_mask)
  arms.check(tuple(vol0.shape), str(src0), mask)  # refuse a tile that cannot run before reading everything
  if mask is None:
    # One pass over the files names the first NaN/inf; with a mask, only the tiles that run are checked.
    io.check_finite(str(src0), vol0)
    io.check_finite(str(src1), vol1)
  try:
    flow, summaries = arms.estimate(vol0, vol1, mask, progress)
  except ValueError as e:  # a non-finite tile under the mask, or a volume the network cannot take
    raise _name_files(e, {'vol0': src0, 'vol1': src1, 'mask': src_mask}) from None
  io.write_flow(output, flow)
  summary = dict(summaries[-1])
  summary['tiles_all_arms'] = sum(s['tiles'] for s in summaries)
  summary['total_seconds'] = time.perf_counter() - t0
  summary['max_flow'] = max_magnitude(flow)
  return summary, summaries


def run_single() -> None:
  """One pair: --vol0, --vol1 (and --mask) -> --output."""
  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer import tiled
  src0, src1 = Source(_VOL0.value), Source(_VOL1.value)
  mask = Source(_MASK.value) if _MASK.value else None
  shape = tuple(read_inputs(src0, src1, mask)[0].shape)  # formats and shapes before the checkpoint
  arms = load_arms()
  summary, summaries = run_pair(arms, src0, src1, mask, _OUTPUT.value, _PROGRESS.value)
  for s, arm in zip(summaries, ('coarse arm: ', 'fine arm: ') if len(summaries) == 2 else ('',)):
    _say(arm + tiled.format_summary(s))
  _say(f'wrote {_OUTPUT.value}: float32 (3, {", ".join(map(str, shape))}), max |u| {summary["max_flow"]:.3g} '
       f'voxels; {summary["total_seconds"]:.1f} s in all')


def run_batch() -> None:
  pairs = find_pairs(_DATA_DIR.value)
  suffix = '.' + _OUTPUT_FORMAT.value
  outputs = [os.path.join(_OUTPUT_DIR.value, f'{name}_flow{suffix}') for name, *_ in pairs]
  # Every pair is read and checked against the others before the first estimate, so a bad one late in the
  # list does not surface after hours of work.
  for (name, src0, src1, src_mask), out in zip(pairs, outputs):
    read_inputs(src0, src1, src_mask)
    for src in (src0, src1, src_mask):
      if src is not None and os.path.exists(out) and os.path.samefile(src.path, out):
        raise ValueError(f'{out}: the flow of {name} would overwrite an input')
  _say(f'{len(pairs)} pairs in {_DATA_DIR.value} -> {_OUTPUT_DIR.value}')
  arms = load_arms()
  t0 = time.perf_counter()
  voxels = tiles = 0
  for i, ((name, src0, src1, src_mask), out) in enumerate(zip(pairs, outputs)):
    try:
      summary, _ = run_pair(arms, src0, src1, src_mask, out, False)
    except (ValueError, OSError) as e:
      raise type(e)(f'pair {name!r}: {e}') from None
    voxels += summary['voxels']
    tiles += summary['tiles_all_arms']
    elapsed = time.perf_counter() - t0
    eta = elapsed / (i + 1) * (len(pairs) - i - 1)
    if _PROGRESS.value:
      _say(f'[{i + 1}/{len(pairs)}] {name}: {summary["voxels"]:,} voxels, {summary["tiles_all_arms"]} tiles, '
           f'{summary["total_seconds"]:.1f} s, max |u| {summary["max_flow"]:.3g} -> {out}  (ETA {eta:.0f} s)')
  seconds = time.perf_counter() - t0
  _say(f'{len(pairs)} pairs, {voxels:,} voxels, {tiles} tiles, {seconds:.1f} s, '
       f'{voxels / max(seconds, 1e-9):,.0f} voxels/s; flows in {_OUTPUT_DIR.value}')


def run_demo() -> None:
  """A synthetic bead pair with a known field: its flow, the EPE against the truth, a PNG of slices."""
  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer import demo
  from raftdvc_jax.infer import tiled
  from raftdvc_jax.infer.estimator import FlowEstimator
  from raftdvc_jax.model.config import preset
  trained = _CHECKPOINT.value is not None
  if trained:
    estimator, label = raftdvc_jax.load(_CHECKPOINT.value), _CHECKPOINT.value
  else:
    _say('no --checkpoint: running the s4 preset with randomly initialised weights. No trained weights ship '
         'with raftdvc_jax yet, so the EPE below shows that the pipeline runs, not how accurate it is.')
    config = preset('s4')
    t0 = time.perf_counter()
    estimator, label = FlowEstimator(config, demo.random_variables(config, _SEED.value)), 's4, untrained'
    _say(f'random weights (seed {_SEED.value}) in {time.perf_counter() - t0:.1f} s')
  arms = load_arms(estimator, label)
  stride = min(demo.PAIR_PRESETS, key=lambda s: (abs(s - estimator.config.stride), s))
  size = _DEMO_SIZE.value
  arms.check((size,) * 3, f'--demo_size {size}')

  def estimate(vol0, vol1):
    flow, summaries = arms.estimate(vol0, vol1, None, _PROGRESS.value)
    _say(tiled.format_summary(summaries[-1]))
    return flow

  report = demo.run_demo(estimate, _DEMO_OUTPUT.value, stride=stride, size=size, seed=_SEED.value,
                         trained=trained, label=f'{label} (stride {estimator.config.stride})')
  print(demo.format_report(report), flush=True)


def run() -> None:
  which = check_flags()
  from raftdvc_jax.infer import tiled  # pylint: disable=import-outside-toplevel
  tiled.enable_compilation_cache()
  {'single': run_single, 'batch': run_batch, 'demo': run_demo}[which]()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step at INFO
  cli.run(run, 'error: interrupted; nothing written for the pair in progress')


if __name__ == '__main__':
  app.run(main)
