"""Endpoint-error statistics on the host (numpy), shared by training validation and raftdvc-evaluate."""

from __future__ import annotations

from typing import Sequence

import numpy as np

QUANTILES = {'median': 50.0, 'p90': 90.0, 'p99': 99.0}


def endpoint_error(pred, gt, axis: int = 0) -> np.ndarray:
  """Per-voxel |pred - gt|_2 over the component axis (0 for the (3, X0, X1, X2) file layout)."""
  diff = np.asarray(pred, np.float64) - np.asarray(gt, np.float64)
  return np.sqrt(np.sum(diff * diff, axis=axis)).astype(np.float32)


def summarize(values: Sequence[float] | np.ndarray, quantiles=('median', 'p90', 'p99')) -> dict[str, float]:
  """{'n', 'mean', 'std', 'min', 'max', and the named quantiles} of a set of values (NaN-free)."""
  v = np.asarray(values, np.float64).ravel()
  if v.size == 0:
    raise ValueError('no values to summarize')
  out = {'n': int(v.size), 'mean': float(v.mean()), 'std': float(v.std()), 'min': float(v.min()),
         'max': float(v.max())}
  for name in quantiles:
    out[name] = float(np.percentile(v, QUANTILES[name]))
  return out
