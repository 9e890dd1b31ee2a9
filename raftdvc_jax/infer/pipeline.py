"""Coarse-to-fine tiled estimation of volume pairs on disk: the library behind infer.py.

  pipe = Pipeline(raftdvc_jax.load('s4_run'), coarse=raftdvc_jax.load('s8_run'), tile=64, strategy='accurate')
  flow, summaries = pipe.estimate(vol0, vol1)              # arrays or memory maps
  pipe.run_pair(pairs.Pair('a', {...}), 'a_flow.npy')       # read, check, estimate, post-process, write

A Pipeline holds the fine arm, an optional coarser arm run first (its flow starts the fine arm), the resolved
strategy and tiling, and post-processing hooks: callables Estimate -> Estimate run after the flow is
estimated and before it is written (a refinement replaces `flow`; a strain hook writes its own files). A hook
with an `outputs(flow_path)` method lists the extra files it writes, so they are checked before any compute.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from raftdvc_jax.data import io
from raftdvc_jax.data import pairs as pairs_lib
from raftdvc_jax.infer import coarse_to_fine
from raftdvc_jax.infer import strategies
from raftdvc_jax.infer import tiling

log = logging.getLogger(__name__)
MAX_TILES_WARNING = 10_000


class Estimate(NamedTuple):
  """What a post-processing hook sees: the pair's arrays, the flow (3, X0, X1, X2), where it will be written."""

  name: str
  vol0: Any
  vol1: Any
  mask: Any
  flow: np.ndarray
  output: Optional[str]
  summary: dict


Hook = Callable[[Estimate], Estimate]


def max_magnitude(flow) -> float:
  """The largest |u| of a flow (3, X0, X1, X2), a few planes at a time (it may be a memory map)."""
  best = 0.0
  rows = max(1, tiling.BLOCK_BYTES // (4 * 3 * 4 * math.prod(flow.shape[2:])))  # the block and 3 temporaries
  for start in range(0, flow.shape[1], rows):
    block = np.asarray(flow[:, start:start + rows])
    best = max(best, float(np.sqrt((block * block).sum(0)).max()))
  return best


def warn_if_suspicious(vol0, vol1, where: str, sample_rows: int = 8) -> list[str]:
  """Warnings for a legal pair that is probably a mistake (constant volume, very different ranges or dtypes)."""
  notes = []
  if np.dtype(vol0.dtype) != np.dtype(vol1.dtype):
    notes.append(f'{where}: the volumes have different dtypes ({vol0.dtype} and {vol1.dtype}); is it the right pair?')
  step = max(1, vol0.shape[0] // sample_rows)  # a few planes: cheap on a memory map of any size
  ranges = []
  for v in (vol0, vol1):
    planes = np.asarray(v[::step], np.float64)
    ranges.append((float(planes.min()), float(planes.max())))
  for (lo, hi), which in zip(ranges, ('vol0', 'vol1')):
    if hi == lo:
      notes.append(f'{where}: {which} looks constant ({lo:g}); its flow is meaningless')
  spans = [hi - lo for lo, hi in ranges]
  if min(spans) > 0 and max(spans) / min(spans) > 10:
    notes.append(f'{where}: the intensity ranges differ more than 10x ({ranges[0]} vs {ranges[1]}); both are '
                 'normalised jointly, so the dimmer one loses contrast')
  for note in notes:
    log.warning(note)
  return notes


@dataclasses.dataclass
class Pipeline:
  """A fine arm, an optional coarse arm run first, the tiling and strategy, and post-processing hooks."""

  fine: Any                                   # FlowEstimator
  coarse: Any = None                          # FlowEstimator of a coarser arm, or None
  tile: Any = 0                               # N, (X, Y, Z) or 'X,Y,Z'; 0 = the whole volume
  strategy: str = strategies.DEFAULT
  iters: Optional[int] = None                 # explicit settings override the strategy's
  overlap: Optional[float] = None
  blend: Optional[str] = None
  batch: Optional[int] = None
  hooks: Sequence[Hook] = ()
  labels: tuple = ('fine', 'coarse')
  across_processes: bool = False              # split the tiles over a jax.distributed job; process 0 writes

  def __post_init__(self):
    if self.across_processes and self.coarse is not None:
      raise ValueError('coarse-to-fine does not run over several processes yet; run the coarse arm alone first')
    self.tile = tiling.parse_tile(self.tile)
    self.settings = strategies.resolve(self.strategy, iters=self.iters, overlap=self.overlap, blend=self.blend,
                                       coarse_to_fine=True if self.coarse is not None else None)
    self.hooks = list(self.hooks)

  def arms(self):
    """(estimator, label) of each arm in run order: the coarse one first."""
    out = [] if self.coarse is None else [(self.coarse, self.labels[1])]
    return out + [(self.fine, self.labels[0])]

  def describe(self) -> str:
    """One line: iterations, tiling, overlap, blend, coarse-to-fine."""
    s = self.settings
    where = ('the whole volume' if not any(self.tile)
             else f'tiles of {"x".join(str(t) if t else "all" for t in self.tile)}')
    return (f'{s.iters} iterations on {where}, overlap {s.overlap}, {s.blend} blend'
            f'{", coarse-to-fine" if self.coarse is not None else ""} (strategy {s.name})')

  def check(self, shape, where: str, mask=None) -> None:
    """Refuses, before anything runs, a volume or tile either arm cannot take or a tile that does not fit."""
    for est, label in self.arms():
      c = est.config
      if any(self.tile):
        c.check_size([t or n for t, n in zip(self.tile, shape)], f'tile of the {label} arm')
      c.check_size(shape, f'{where}: volume')
      plan, _ = est.plan(shape, self.tile, self.settings.overlap, mask, self.batch)
      if plan.num_tiles > MAX_TILES_WARNING:
        log.warning('%s: %d tiles for the %s arm (tile %s, overlap %s); check --tile and --overlap', where,
                    plan.num_tiles, label, 'x'.join(map(str, plan.tile)), self.settings.overlap)

  def estimate(self, vol0, vol1, mask=None, progress: bool = False):
    """(flow, [summary per arm]): the coarse arm first when there is one, its flow starting the fine arm."""
    s = self.settings
    kwargs = dict(tile=self.tile, overlap=s.overlap, blend=s.blend, batch=self.batch, iters=s.iters, mask=mask,
                  progress=progress, return_summary=True, across_processes=self.across_processes)
    summaries, init_fn = [], None
    if self.coarse is not None:
      coarse, summary = self.coarse.tiled(vol0, vol1, **kwargs)
      summaries.append(summary)
      init_fn = coarse_to_fine.flow_init_fn(coarse, self.fine.config.stride, self.fine.config.flow_scale)
    flow, summary = self.fine.tiled(vol0, vol1, flow_init_fn=init_fn, **kwargs)
    summaries.append(summary)
    return flow, summaries

  def hook_outputs(self, output: str) -> list[str]:
    """The extra files the hooks will write beside the flow `output`."""
    return [p for h in self.hooks if hasattr(h, 'outputs') for p in h.outputs(output)]

  def run_pair(self, pair: pairs_lib.Pair, output: Optional[str], progress: bool = False) -> Estimate:
    """Reads, checks, estimates, post-processes and (unless output is None) writes one pair."""
    t0 = time.perf_counter()
    arrays = pairs_lib.read_pair(pair, mmap=True, check=False)
    vol0, vol1, mask = arrays['vol0'], arrays['vol1'], arrays.get('mask')
    src0, src1 = pair.sources['vol0'], pair.sources['vol1']
    self.check(tuple(vol0.shape), str(src0), mask)  # refuse a tile that cannot run before reading everything
    if mask is None:
      # One pass over the files names the first NaN/inf; with a mask, only the tiles that run are checked.
      io.check_finite(str(src0), vol0)
      io.check_finite(str(src1), vol1)
    warn_if_suspicious(vol0, vol1, str(src0))
    try:
      flow, summaries = self.estimate(vol0, vol1, mask, progress)
    except ValueError as e:  # a non-finite tile under the mask, or a volume the network cannot take
      raise _name_files(e, pair.sources) from None
    summary = dict(summaries[-1], arms=summaries, tiles_all_arms=sum(s['tiles'] for s in summaries))
    result = Estimate(pair.name, vol0, vol1, mask, flow, output, summary)
    if flow is None:  # a process other than 0 of a distributed run: its tiles are in process 0's flow
      result.summary.update(total_seconds=time.perf_counter() - t0, max_flow=float('nan'))
      return result
    for hook in self.hooks:
      result = hook(result)
    if output is not None:
      io.write_flow(output, result.flow)
    result.summary['total_seconds'] = time.perf_counter() - t0
    result.summary['max_flow'] = max_magnitude(result.flow)
    return result


def _name_files(e: Exception, sources: dict) -> ValueError:
  """The runner names volumes vol0/vol1/mask; say which files they are."""
  message = str(e)
  for key, source in sources.items():
    if message.startswith(f'{key}:'):
      return ValueError(f'{source}:{message[len(key) + 1:]}')
  shown = ', '.join(str(s) for k, s in sources.items() if k != 'mask')
  return ValueError(f'{shown}: {message}')


def output_paths(pairs: Sequence[pairs_lib.Pair], output_dir: str, suffix: str) -> list[str]:
  """Where batch mode writes each pair's flow: OUTPUT_DIR/NAME_flow.SUFFIX."""
  return [os.path.join(output_dir, f'{p.name}{pairs_lib.RESULT_SUFFIX}.{suffix.lstrip(".")}') for p in pairs]


def run_pairs(pipe: Pipeline, pairs: Sequence[pairs_lib.Pair], outputs: Sequence[str], progress: bool = True):
  """Estimates and writes every pair (one bar over the pairs, or the tile bar for a single pair)."""
  from raftdvc_jax import progress as progress_lib  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer import tiled  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  results = []
  single = len(pairs) == 1
  with progress_lib.bar(len(pairs), 'pairs', progress and not single, unit='pair') as bar:
    for i, (pair, out) in enumerate(zip(pairs, outputs)):
      try:
        result = pipe.run_pair(pair, out, progress and single)
      except (ValueError, OSError) as e:
        raise type(e)(f'pair {pair.name!r}: {e}' if not single else str(e)) from None
      s = result.summary
      if result.flow is None:
        log.info('process %d: %s; process 0 writes %s', s['process'], tiled.format_summary(s), out)
      elif single:
        log.info('wrote %s: %s; max |u| %.3g voxels', out, tiled.format_summary(s), s['max_flow'])
      else:
        log.info('[%d/%d] %s: %s; max |u| %.3g voxels -> %s', i + 1, len(pairs), pair.name,
                 tiled.format_summary(s), s['max_flow'], out)
      results.append(result)
      bar.update(1)
  if not single:
    seconds = time.perf_counter() - t0
    voxels = sum(r.summary['voxels'] for r in results)
    log.info('%d pairs, %s voxels, %d tiles, %.1f s, %s voxels/s', len(results), f'{voxels:,}',
             sum(r.summary['tiles_all_arms'] for r in results), seconds, f'{voxels / max(seconds, 1e-9):,.0f}')
  return results
