"""Timing for the benchmarks in tools/bench_*.py."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping


def first_and_median(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
  """(seconds of the first call, which includes compilation, median seconds of `repeats` more calls)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def alternate(fns: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
  """Seconds of each fn over `rounds` rounds in which every fn runs once, in turn, after one warm-up each.

  Alternating in one process exposes every side to the same machine state (load, clock, caches), so a ratio
  of two sides is not skewed by the machine drifting between two separate measurements.
  """
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def spread(times) -> str:
  """'median (min-max)' of a list of seconds, e.g. '2.74 s (2.70-2.81)'."""
  return f'{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})'


def ratio_spread(slow, fast) -> str:
  """'median (min-max)' of the per-round ratios slow[i] / fast[i] of two alternated sides."""
  ratios = [s / f for s, f in zip(slow, fast)]
  return f'{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})'
