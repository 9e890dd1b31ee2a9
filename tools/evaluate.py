r"""Runs a checkpoint over a dataset with ground truth and writes per-sample and summary endpoint errors.

  python tools/evaluate.py --checkpoint=runs/s4 --data=data/r4_64 --split=test --output=runs/s4/eval_test

--checkpoint: a training run directory (its best step by validation EPE; --which=latest for the last one), a
step directory WORKDIR/checkpoints/<step>, a converted directory or a RAFT-DVC / VolRAFT .pth/.pt file.
--data: RAFT-DVC .npz samples (I1, I2, flow [, mask, metadata]) or vol0/ vol1/ flow/ [mask/] folders of .npy,
optionally in a --split subdirectory. Writes OUTPUT/metrics.csv (one row per sample: name, mean and max EPE,
mean |u|, deformation type) and OUTPUT/summary.json (mean, std, median, p90, p99, min, max of the per-sample
mean EPE, and the mean per deformation type). Where a sample has a mask, only voxels inside it count (>= 0.5, raftdvc_jax.data.masks).
"""

from __future__ import annotations

import csv
import io as std_io
import os

from absl import flags

from raftdvc_jax.data import masks

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Run directory, step directory, converted directory or .pth.')
_DATA = flags.DEFINE_string('data', None, 'Dataset directory with ground truth.')
_SPLIT = flags.DEFINE_string('split', None, 'Subdirectory of --data to evaluate (e.g. test).')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory for metrics.csv and summary.json.')
_ITERS = flags.DEFINE_integer('iters', None, 'Refinement iterations (default: the model config\'s).')
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Step of a training run to evaluate.')
_MAX_SAMPLES = flags.DEFINE_integer('max_samples', None, 'Evaluate only the first N samples.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar on stderr.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace metrics.csv and summary.json already in --output.')
flags.mark_flags_as_required(['checkpoint', 'data', 'output'])

OUTPUTS = ('metrics.csv', 'summary.json')
COLUMNS = ('name', 'epe_mean', 'epe_max', 'gt_flow_mag_mean', 'deformation')


def load_estimator(path: str, which: str = 'best'):
  """A FlowEstimator for a run / step / converted directory or a .pth/.pt; (estimator, what was loaded)."""
  import raftdvc_jax  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
  if os.path.isdir(path) and os.path.isdir(os.path.join(path, checkpoint.CHECKPOINTS)):
    estimator = raftdvc_jax.load(path, which=which)
    return estimator, estimator.provenance.get('step_dir', path)
  if os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path)):  # a checkpoints/ directory
    path = checkpoint.resolve(path, which)
  return raftdvc_jax.load(path), path


def samples(root: str):
  """(name, sample) pairs of a dataset directory, in name order; sample = vol0, vol1, flow[, mask], deformation."""
  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.data import io
  from raftdvc_jax.train import input_pipeline
  dataset = input_pipeline.open_directory(root)
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
  """(rows, summary) for every sample of `root`."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from raftdvc_jax import metrics  # pylint: disable=import-outside-toplevel
  from raftdvc_jax import progress as progress_lib  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.train import input_pipeline  # pylint: disable=import-outside-toplevel
  total = len(input_pipeline.open_directory(root))
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
  from raftdvc_jax import atomic  # pylint: disable=import-outside-toplevel
  buf = std_io.StringIO()
  w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator='\n')
  w.writeheader()
  for r in rows:
    w.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in r.items()})
  atomic.write_text(os.path.join(output, 'metrics.csv'), buf.getvalue())
  atomic.write_json(os.path.join(output, 'summary.json'), summary)


def check_outputs(output: str, overwrite: bool) -> None:
  """Refuses, before any compute, an --output that cannot be written or already holds results."""
  from raftdvc_jax import cli  # pylint: disable=import-outside-toplevel
  cli.check_writable(output, '--output', folder=True)
  for name in OUTPUTS:
    cli.check_new_output(os.path.join(output, name), overwrite, 'result')


def run() -> None:
  root = os.path.join(_DATA.value, _SPLIT.value) if _SPLIT.value else _DATA.value
  check_outputs(_OUTPUT.value, _OVERWRITE.value)
  from raftdvc_jax.train import input_pipeline  # pylint: disable=import-outside-toplevel
  input_pipeline.open_directory(root)  # a bad --data fails before the model loads
  estimator, resolved = load_estimator(_CHECKPOINT.value, _WHICH.value)
  rows, summary = evaluate(estimator, root, _ITERS.value, _MAX_SAMPLES.value, _PROGRESS.value)
  summary.update(checkpoint=resolved, data=os.path.abspath(root), iters=_ITERS.value or estimator.config.iters)
  write_results(_OUTPUT.value, rows, summary)
  print(f'{summary["n_samples"]} samples: mean EPE {summary["epe_mean"]:.4f} (median {summary["epe_median"]:.4f}, '
        f'p90 {summary["epe_p90"]:.4f}) -> {_OUTPUT.value}')


def main(argv):
  from raftdvc_jax import cli  # pylint: disable=import-outside-toplevel
  cli.no_arguments(argv)
  cli.quiet_logs()
  cli.show_info()
  cli.run(run)


if __name__ == '__main__':
  from raftdvc_jax import cli  # pylint: disable=g-import-not-at-top
  cli.start(main)
