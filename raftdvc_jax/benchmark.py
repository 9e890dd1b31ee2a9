"""Timing for the benchmarks in tools/bench_*.py."""

from __future__ import annotations

import statistics
import time
from typing import Callable


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
