r"""Exports a training run's best step as a converted checkpoint directory (e.g. the shipped weights).

  raftdvc-export --run runs/s4_starter --output raftdvc_jax/weights/s4-starter --iters 12

The directory holds model_config.json (with --iters as the inference default), provenance.json (run, step,
validation record) and the params only (no optimizer state), and loads with raftdvc_jax.load().
"""

from absl import app
from absl import flags

from raftdvc_jax import cli
from raftdvc_jax.train import export

_RUN = flags.DEFINE_string('run', None, 'Training run directory (WORKDIR of train.py).')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory to write.')
_WHICH = flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Which step: best by val_epe, or latest.')
_ITERS = flags.DEFINE_integer('iters', None, 'Inference iterations stored in the model config.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing converted directory at --output.')
_TILE = flags.DEFINE_integer('tile', 0, 'Tile size infer.py uses with these weights when --tile is not given '
                             '(0: whole volume); e.g. the crop size they were trained on.', lower_bound=0)
_OVERLAP = flags.DEFINE_float('overlap', 0.5, 'Tile overlap recorded with --tile.')
_STORAGE = flags.DEFINE_enum('storage_dtype', 'float32', ['float32', 'float16'], 'Store the weights in float16 '
                             '(half the size, read back as float32; the shipped weights are).')
flags.mark_flags_as_required(['run', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.quiet_logs()
  notes = {'inference': {'tile': _TILE.value, 'overlap': _OVERLAP.value}} if _TILE.value else None
  print(cli.run(lambda: export.export_run(_RUN.value, _OUTPUT.value, _WHICH.value, _ITERS.value,
                                          _OVERWRITE.value, notes, _STORAGE.value)))


def entry():
  cli.start(main)


if __name__ == '__main__':
  entry()
