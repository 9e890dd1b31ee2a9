r"""Measures how fast synthetic pairs are made: samples/s in one thread and through the batch iterator.

  python tools/bench_data.py --presets r2_32,r4_64 --samples 40 --workers 2

Prints a Markdown table for docs/performance.md. Each preset uses its RAFT-DVC family mix with noise on, the
setting training on the fly runs; --deformation overrides the family. "per CPU-second" divides by the
process CPU time of the single-thread run, which stays meaningful on a machine other jobs are loading.
"""

from __future__ import annotations

import os
import platform
import sys
import time

from absl import app
from absl import flags
import numpy as np

from raftdvc_jax.data import augment
from raftdvc_jax.data import datasets
from raftdvc_jax.data import synthetic

_PRESETS = flags.DEFINE_list('presets', ['r2_32', 'r4_64'], 'Presets to time.')
_SAMPLES = flags.DEFINE_integer('samples', 40, 'Samples timed per preset and mode.', lower_bound=1)
_WORKERS = flags.DEFINE_integer('workers', 2, 'Loader threads / processes for the iterator.', lower_bound=1)
_BATCH = flags.DEFINE_integer('batch_size', 4, 'Batch size for the iterator measurement.', lower_bound=1)
_DEFORMATION = flags.DEFINE_string('deformation', None, 'Override the presets\' family mix.')


def time_single(config, n: int) -> tuple[float, float]:
  """Samples/s of make_pair in this thread: by wall clock, and by CPU time."""
  synthetic.make_pair(config, (0, 10**6))  # warm caches
  start, cpu = time.perf_counter(), time.process_time()
  for i in range(n):
    synthetic.make_pair(config, (0, i))
  return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def time_iterator(config, n: int, batch_size: int, workers: int, processes: bool) -> float:
  """Samples/s of batches() over the synthetic source, with flips and rot90."""
  steps = max(1, n // batch_size)
  it = datasets.batches(datasets.SyntheticDataset(config, seed=1), batch_size, augment=augment.Augment(),
                        num_steps=steps + 1, num_workers=workers, prefetch=2 * workers, processes=processes)
  next(it)  # the first batch includes starting the workers
  start = time.perf_counter()
  for _ in it:
    pass
  return steps * batch_size / (time.perf_counter() - start)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    changes = {'deformation': _DEFORMATION.value} if _DEFORMATION.value else {}
    configs = {name: synthetic.preset(name, **changes) for name in _PRESETS.value}
  except ValueError as e:
    print(f'bench_data: error: {e}', file=sys.stderr)
    return 1
  w, b = _WORKERS.value, _BATCH.value
  print(f'machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, '
        f'python {platform.python_version()}, numpy {np.__version__}')
  print(f'| preset | size | make_pair, 1 thread | make_pair per CPU-second | batches(), {w} threads, B={b} | '
        f'batches(), {w} processes, B={b} |')
  print('|---|---|---|---|---|---|')
  for name, config in configs.items():
    wall, cpu = time_single(config, _SAMPLES.value)
    threads = time_iterator(config, _SAMPLES.value, b, w, processes=False)
    procs = time_iterator(config, _SAMPLES.value, b, w, processes=True)
    print(f'| {name} | {config.shape[0]}^3 | {wall:.1f} | {cpu:.1f} | {threads:.1f} | {procs:.1f} |', flush=True)
  print('(samples/s; deformation ' + ', '.join(sorted({c.deformation for c in configs.values()})) + ', noise on)')
  return 0


if __name__ == '__main__':
  from raftdvc_jax import cli  # pylint: disable=g-import-not-at-top
  cli.start(main)  # --help exits 0
