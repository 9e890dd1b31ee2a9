r"""Plots a training run's learning curves (train loss, val EPE beside no-motion EPE, lr) as a PNG.

  python tools/plot_metrics.py --metrics runs/s4/metrics.jsonl --output curves.png
"""

import os

from absl import app
from absl import flags

from raftdvc_jax import cli
from raftdvc_jax.train import curves

_METRICS = flags.DEFINE_string('metrics', None, 'metrics.jsonl of a run, or the run directory.')
_OUTPUT = flags.DEFINE_string('output', None, 'PNG to write.')
_TITLE = flags.DEFINE_string('title', '', 'Figure title.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing --output.')
flags.mark_flags_as_required(['metrics', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if os.path.exists(_OUTPUT.value) and not _OVERWRITE.value:
    cli.fail(f'{_OUTPUT.value}: already exists (pass --overwrite to replace it)')
  cli.run(lambda: print(curves.plot_metrics(curves.read_metrics(_METRICS.value), _OUTPUT.value, _TITLE.value)))


if __name__ == '__main__':
  cli.start(main)
