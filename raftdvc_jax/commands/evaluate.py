r"""Runs a checkpoint over a dataset with ground truth and writes per-sample and summary endpoint errors.

  raftdvc-evaluate --checkpoint=runs/s4 --data=data/r4_64 --split=test --output=runs/s4/eval_test

--checkpoint: a training run directory (its best step by validation EPE; --which=latest for the last one), a
step directory WORKDIR/checkpoints/<step>, a converted directory or a RAFT-DVC / VolRAFT .pth/.pt file.
--data: RAFT-DVC .npz samples (I1, I2, flow [, mask, metadata]) or vol0/ vol1/ flow/ [mask/] folders of .npy,
optionally in a --split subdirectory. Writes OUTPUT/metrics.csv (one row per sample: name, mean and max EPE,
mean |u|, deformation type) and OUTPUT/summary.json (mean, std, median, p90, p99, min, max of the per-sample
mean EPE, and the mean per deformation type). Where a sample has a mask, only voxels inside it count
(>= 0.5, raftdvc_jax.data.masks).
"""

from __future__ import annotations

import os

from absl import flags

from raftdvc_jax import cli

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

def check_outputs(output: str, overwrite: bool) -> None:
  """Refuses, before any compute, an --output that cannot be written or already holds results."""
  cli.check_writable(output, '--output', folder=True)
  from raftdvc_jax.infer import evaluate  # pylint: disable=import-outside-toplevel
  for name in evaluate.OUTPUTS:
    cli.check_new_output(os.path.join(output, name), overwrite, 'result')


def run() -> None:
  root = os.path.join(_DATA.value, _SPLIT.value) if _SPLIT.value else _DATA.value
  check_outputs(_OUTPUT.value, _OVERWRITE.value)
  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer.estimator import load
  from raftdvc_jax.data import datasets
  from raftdvc_jax.infer import evaluate
  datasets.open_directory(root)  # a bad --data fails before the model loads
  estimator = load(_CHECKPOINT.value, which=_WHICH.value)
  rows, summary = evaluate.evaluate(estimator, root, _ITERS.value, _MAX_SAMPLES.value, _PROGRESS.value)
  given = _CHECKPOINT.value  # a shipped name stays a name; a path is made absolute, a run names its step
  summary.update(checkpoint=estimator.provenance.get('step_dir') or (os.path.abspath(given) if os.path.exists(given)
                                                                      else given),
                 data=os.path.abspath(root), iters=_ITERS.value or estimator.config.iters)
  evaluate.write_results(_OUTPUT.value, rows, summary)
  print(f'{summary["n_samples"]} samples: mean EPE {summary["epe_mean"]:.4f} (median {summary["epe_median"]:.4f}, '
        f'p90 {summary["epe_p90"]:.4f}) -> {_OUTPUT.value}')


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_logs()
  cli.show_info()
  cli.run(run)


def entry():
  cli.start(main)


if __name__ == '__main__':
  entry()
