"""Scoring a network on a dataset with ground truth: EPE per sample, summarised, per deformation type too."""

from __future__ import annotations

import csv
import io as std_io
import os

import numpy as np

from raftdvc_jax import atomic
from raftdvc_jax import metrics
from raftdvc_jax import progress as progress_lib
from raftdvc_jax.data import datasets
from raftdvc_jax.data import io
from raftdvc_jax.data import masks

OUTPUTS = ('metrics.csv', 'summary.json')
COLUMNS = ('name', 'epe_mean', 'epe_max', 'gt_flow_mag_mean', 'deformation')


def samples(root: str):
  """(name, sample) pairs of a dataset directory, in name order; sample = vol0, vol1, flow[, mask], deformation."""
  dataset = datasets.open_directory(root)
  if hasattr(dataset, 'files'):  # .npz samples carry their metadata (deformation type)
    for path in dataset.files:
      s = io.read_sample(path)
      meta = s.get('metadata') or {}
      out = {'vol0': s['I1'], 'vol1': s['I2'], 'flow': s['flow'],
             'deformation': str(meta.get('deformation', meta.get('deform_type', '')))}
      if 'mask' in s:
        out['mask'] = s['mask']
      yield os.path.basename(path), out
  else:
    for i in range(len(dataset)):
      s = dataset[i]
      yield s['name'], dict(s, deformation='')


def evaluate(estimator, root: str, iters: int | None = None, max_samples: int | None = None,
             progress: bool = True) -> tuple[list[dict], dict]:
  """(rows, summary) for every sample of `root`: EPE mean and max per sample (inside its mask, if any)."""
  total = len(datasets.open_directory(root))
  total = min(total, max_samples) if max_samples else total
  bar = progress_lib.bar(total, 'evaluate', progress, unit='sample')
  rows = []
  for i, (name, s) in enumerate(samples(root)):
    if max_samples and i >= max_samples:
      break
    pred = estimator(s['vol0'], s['vol1'], iters=iters)
    epe = metrics.endpoint_error(pred, s['flow'])
    mag = np.sqrt(np.sum(np.square(s['flow'], dtype=np.float64), axis=0))
    if 'mask' in s:
      keep = masks.inside(s['mask'])
      if not keep.any():
        raise ValueError(f'{os.path.join(root, name)}: the mask selects no voxel')
      epe, mag = epe[keep], mag[keep]
    rows.append({'name': name, 'epe_mean': float(epe.mean()), 'epe_max': float(epe.max()),
                 'gt_flow_mag_mean': float(mag.mean()), 'deformation': s['deformation']})
    bar.update(1)
  bar.close()
  if not rows:
    raise ValueError(f'{root}: no samples to evaluate')
  stats = metrics.summarize([r['epe_mean'] for r in rows])
  summary = {'n_samples': stats['n'], **{f'epe_{k}': v for k, v in stats.items() if k != 'n'},
             'gt_flow_mag_mean': float(np.mean([r['gt_flow_mag_mean'] for r in rows]))}
  kinds = sorted({r['deformation'] for r in rows if r['deformation']})
  if kinds:
    summary['per_deformation'] = {
        k: {'n_samples': sum(r['deformation'] == k for r in rows),
            'epe_mean': float(np.mean([r['epe_mean'] for r in rows if r['deformation'] == k]))} for k in kinds}
  return rows, summary


def write_results(output: str, rows: list[dict], summary: dict) -> None:
  """OUTPUT/metrics.csv and OUTPUT/summary.json, each written atomically."""
  buf = std_io.StringIO()
  w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator='\n')
  w.writeheader()
  for r in rows:
    w.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in r.items()})
  atomic.write_text(os.path.join(output, 'metrics.csv'), buf.getvalue())
  atomic.write_json(os.path.join(output, 'summary.json'), summary)
