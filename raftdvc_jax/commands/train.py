r"""Trains a RAFT-DVC / VolRAFT network from an ml_collections config (configs/*.py hold the recipes).

  raftdvc-train --config=configs/smoke.py --workdir=/tmp/raftdvc_smoke
  raftdvc-train --config=configs/raftdvc.py:s4 --workdir=runs/s4 --config.train.batch_size=16

(`python train.py ...` in a checkout is the same.) Running the same command again resumes from
WORKDIR/checkpoints (from the newest step that restores); with a larger --config.train.num_steps it trains on.
Fine-tune from PyTorch weights with --config.init_from=path/to/best_model.pth. On several hosts, start one
process per host with --distributed (SLURM, Open MPI and TPU pods are detected; otherwise give
--coordinator_address, --num_processes and --process_id). WORKDIR gets metrics.jsonl, TensorBoard events in
tensorboard/, and checkpoints/<step>/ that infer.py and raftdvc_jax.load() read directly. Library logs are
kept at WARNING; -v 0 (or --verbosity=0) shows their INFO lines.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from raftdvc_jax import cli
from raftdvc_jax.commands import multiprocess

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file, e.g. configs/raftdvc.py:s4.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics.jsonl, TensorBoard).')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar on stderr.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_logs()
  cli.show_info()
  cli.run(multiprocess.start)
  from raftdvc_jax import runtime  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.train import loop  # pylint: disable=import-outside-toplevel
  runtime.enable_compilation_cache()  # a resumed run (or the next phase) does not compile its steps again
  config = cli.load_config(_CONFIG)
  last = cli.run(lambda: loop.train_and_evaluate(config, _WORKDIR.value, progress=_PROGRESS.value),
                 '\ninterrupted; run the same command to resume from the last checkpoint')
  if last.get('interrupted'):
    sys.exit(130)


def entry():
  cli.start(main)
