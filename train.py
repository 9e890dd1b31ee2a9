r"""Trains a RAFT-DVC / VolRAFT network from an ml_collections config (see configs/*.py for the recipes).

  python train.py --config=configs/smoke.py --workdir=/tmp/raftdvc_smoke
  python train.py --config=configs/s4.py --workdir=runs/s4 --config.train.batch_size=16

Running the same command again resumes from WORKDIR/checkpoints; with a larger --config.train.num_steps it
trains on. Fine-tune from PyTorch weights with --config.init_from=path/to/best_model.pth. On several hosts,
start one process per host with --distributed (SLURM, Open MPI and TPU pods are detected; otherwise give
--coordinator_address, --num_processes and --process_id). WORKDIR gets metrics.jsonl, TensorBoard events in
tensorboard/, and checkpoints/<step>/ that infer.py and raftdvc_jax.load() read directly.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file, e.g. configs/s4.py.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics.jsonl, TensorBoard).')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False,
                                 'Call jax.distributed.initialize() before anything else (multi-host).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (with --distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (with --distributed).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index (with --distributed).')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar on stderr.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  import jax  # pylint: disable=import-outside-toplevel
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  from raftdvc_jax import cli  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.train import loop  # pylint: disable=import-outside-toplevel
  try:
    config = _CONFIG.value
    config.get('train')  # a file that failed to load raises on first use
  except Exception as e:  # pylint: disable=broad-except
    # config_flags defers a load failure (missing file, error inside get_config) to here, as a long message.
    reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1:] or [type(e).__name__]
    print(f'error: cannot load --config={flags.FLAGS["config"].config_filename}: {reason[0]}', file=sys.stderr)
    sys.exit(1)
  last = cli.run(lambda: loop.train_and_evaluate(config, _WORKDIR.value, progress=_PROGRESS.value),
                 '\ninterrupted; run the same command to resume from the last checkpoint')
  if last.get('interrupted'):
    sys.exit(130)


if __name__ == '__main__':
  app.run(main)
