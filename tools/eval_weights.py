r"""Held-out scorecard of a checkpoint: EPE per deformation family and displacement band, beside no motion.

  python tools/eval_weights.py --checkpoint s4-starter --output scorecard.json
  python tools/eval_weights.py --checkpoint runs/s4 --size 32 --per_cell 1          # quick look at a run
  python tools/eval_weights.py --checkpoint s4-starter --coarse_checkpoint s8-starter --suites reach

Suites: fresh pairs of the training generator (translation, rotation, affine, quadratic, smooth; bands 0.25-1,
1-2, 2-3, 3-4 voxels of maximum component) and Gaussian-blob pairs of another generator (translation, rotation,
stretch, sinusoid; 1 and 2.5 voxels). Prints a Markdown table (the MODEL_CARD's) and writes JSON.
"""

import dataclasses
import json
import os

import numpy as np
from absl import app
from absl import flags

from raftdvc_jax import cli

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Shipped weight name, converted directory or training run.')
_OUTPUT = flags.DEFINE_string('output', None, 'JSON file for the cells (optional).')
_SIZE = flags.DEFINE_integer('size', 64, 'Cube side of the held-out pairs.')
_PER_CELL = flags.DEFINE_integer('per_cell', 2, 'Pairs per cell.')
_ITERS = flags.DEFINE_integer('iters', None, 'Update iterations (default: the checkpoint config).')
_SUITES = flags.DEFINE_list('suites', ['synthetic', 'blobs'], 'Which suites to run (synthetic, blobs, reach: '
                            'moves of 2-24 voxels).')
_COARSE = flags.DEFINE_string('coarse_checkpoint', None, 'Coarse-to-fine: a coarser arm run first, as infer.py '
                              '--coarse_checkpoint.')
_TILE = flags.DEFINE_integer('tile', None, 'Tile size (0: whole volume; default: the weights\' recommended '
                             'tile, as infer.py uses it).', lower_bound=0)
_OVERLAP = flags.DEFINE_float('overlap', None, 'Tile overlap (default: the weights\' recommended one, or 0.5).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing --output.')
flags.mark_flags_as_required(['checkpoint'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.quiet_logs()
  if _OUTPUT.value and os.path.exists(_OUTPUT.value) and not _OVERWRITE.value:
    cli.fail(f'{_OUTPUT.value}: already exists (pass --overwrite to replace it)')
  import raftdvc_jax  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer import scorecard  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer.pipeline import Pipeline  # pylint: disable=import-outside-toplevel
  estimator = cli.run(lambda: raftdvc_jax.load(_CHECKPOINT.value))
  coarse = cli.run(lambda: raftdvc_jax.load(_COARSE.value)) if _COARSE.value else None
  tile, overlap = estimator.tiling(_TILE.value, _OVERLAP.value)
  overlap = 0.5 if overlap is None else overlap
  pipe = Pipeline(estimator, coarse, tile, iters=_ITERS.value or estimator.config.iters, overlap=overlap)
  predict = lambda a, b: np.asarray(pipe.estimate(a, b)[0])
  cells = []
  if 'synthetic' in _SUITES.value:
    cells += scorecard.synthetic_cells(predict, _SIZE.value, _PER_CELL.value)
  if 'reach' in _SUITES.value:
    cells += scorecard.reach_cells(predict, _SIZE.value, _PER_CELL.value)
  if 'blobs' in _SUITES.value:
    cells += scorecard.blob_cells(predict, _SIZE.value, _PER_CELL.value)
  print(scorecard.markdown(cells))
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      json.dump({'checkpoint': _CHECKPOINT.value, 'size': _SIZE.value, 'iters': _ITERS.value,
                 'cells': [dataclasses.asdict(c) for c in cells]}, f, indent=1)


if __name__ == '__main__':
  cli.start(main)
