"""Learning curves from a run's metrics.jsonl: train loss, validation EPE against no motion, learning rate."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)


def read_metrics(path, allow_empty: bool = False) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl file (or of WORKDIR/metrics.jsonl), in order.

  A last line with no newline that does not parse is a record cut short by a kill (the loop writes each
  record and its newline at once) and is left out; any other line that does not parse is an error.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, 'metrics.jsonl')
  records = []
  with open(path) as f:
    lines = f.readlines()
  for number, line in enumerate(lines, 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except ValueError as e:
        if number == len(lines) and not line.endswith('\n'):
          log.info('%s:%d: left out a record cut short by a kill', path, number)
          continue
        raise ValueError(f'{path}:{number}: not a JSON record ({e})') from None
  if not records and not allow_empty:
    raise ValueError(f'{path}: no records')
  return records


def _series(records: Iterable[Mapping[str, Any]], key: str):
  pairs = [(r['step'], r[key]) for r in records if r.get(key) is not None]
  return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_metrics(records: list[Mapping[str, Any]], output, title: str = '') -> str:
  """Writes a PNG of train loss (and correlation loss), val EPE beside val_zero_epe, and lr; returns the path."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
  ax = axes[0]
  for key, label in (('train_loss', 'train loss (total)'), ('train_corr_loss', 'correlation loss')):
    steps, values = _series(records, key)
    if steps:
      ax.plot(steps, values, label=label)
  ax.set_yscale('log')
  ax.set_xlabel('step')
  ax.set_title('training loss')
  ax.legend()
  ax = axes[1]
  for key, label, style in (('train_epe', 'train EPE (window mean)', ':'), ('val_epe', 'val EPE', 'o-'),
                            ('val_zero_epe', 'val EPE of no motion', '--')):
    steps, values = _series(records, key)
    if steps:
      ax.plot(steps, values, style, label=label, markersize=3)
  ax.set_xlabel('step')
  ax.set_ylabel('mean end-point error [voxel]')
  ax.set_ylim(bottom=0)
  ax.set_title('end-point error')
  ax.legend()
  ax = axes[2]
  steps, values = _series(records, 'lr')
  ax.plot(steps, values)
  ax.set_xlabel('step')
  ax.set_title('learning rate')
  if title:
    fig.suptitle(title)
  output = os.fspath(output)
  fig.savefig(output, dpi=110)
  plt.close(fig)
  return output
