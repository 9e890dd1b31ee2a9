r"""Estimates the displacement field between a reference and a deformed volume.

  python infer.py --checkpoint ckpt/s4 --vol0 ref.npy --vol1 def.npy --output flow.npy [--iters 12]

--checkpoint is a converted checkpoint directory (tools/convert_volraft.py) or a RAFT-DVC / VolRAFT .pth/.pt,
converted in memory without executing anything in it. Volumes: .npy, .npz, .tif/.tiff, .h5, or a folder of 2-D
slices (see raftdvc_jax.data.io). The flow is written as float32 (3, X0, X1, X2), channel c = displacement along
array axis c from vol0 to vol1 (vol1(x + u(x)) ~ vol0(x)), through a temporary file renamed into place.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

try:
  import raftdvc_jax
except ImportError:  # run from a checkout without `pip install -e .`
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import raftdvc_jax  # pylint: disable=g-import-not-at-top

from raftdvc_jax.data import io  # pylint: disable=g-import-not-at-top

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Converted checkpoint directory or .pth/.pt file.',
                                  required=True)
_VOL0 = flags.DEFINE_string('vol0', None, 'Reference volume.', required=True)
_VOL1 = flags.DEFINE_string('vol1', None, 'Deformed volume (same shape as --vol0).', required=True)
_OUTPUT = flags.DEFINE_string('output', None, f'Flow file to write ({", ".join(io.VOLUME_SUFFIXES)}).',
                              required=True)
_ITERS = flags.DEFINE_integer('iters', None, 'Refinement iterations (default: the checkpoint\'s).', lower_bound=1)
_TILE = flags.DEFINE_integer('tile', 0, 'Tile side in voxels; 0 runs the whole volume in one pass.',
                             lower_bound=0)


def _say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def check_flags() -> None:
  """Validates what can be checked before any work is done."""
  out = _OUTPUT.value
  suffix = os.path.splitext(out)[1].lower()
  if suffix not in io.VOLUME_SUFFIXES:
    raise ValueError(f'{out}: cannot write a flow as {suffix or "a file without suffix"!r}; '
                     f'use one of {", ".join(io.VOLUME_SUFFIXES)}')
  if os.path.isdir(out):
    raise ValueError(f'{out}: is a directory')
  for path in (_VOL0.value, _VOL1.value, _CHECKPOINT.value):
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path}: no such file or directory')
    if os.path.exists(out) and os.path.samefile(path, out):
      raise ValueError(f'{out}: --output would overwrite an input')
  if _TILE.value != 0:
    raise ValueError(f'--tile {_TILE.value}: tiled inference is not available in this version; use --tile 0')


def estimate(estimator, vol0, vol1, iters):
  """The flow of one pair (whole volume)."""
  return estimator(vol0, vol1, iters=iters)


def run() -> None:
  """Loads the model and the volumes, estimates the flow and writes it."""
  check_flags()
  t0 = time.perf_counter()
  vol0, vol1 = io.read_pair(_VOL0.value, _VOL1.value)
  _say(f'read {_VOL0.value} and {_VOL1.value}: {tuple(vol0.shape)}')
  estimator = raftdvc_jax.load(_CHECKPOINT.value)
  config = estimator.config
  iters = _ITERS.value or config.iters
  _say(f'loaded {_CHECKPOINT.value}: encoder {config.encoder_type}, sampler {config.sampler}'
       f'{", VolRAFT" if config.volraft else ""}; {iters} iterations on the whole volume '
       '(the first run of a shape compiles)')
  t1 = time.perf_counter()
  try:
    flow = estimate(estimator, vol0, vol1, iters)
  except ValueError as e:  # the volumes do not suit the network (too small, non-finite...)
    raise ValueError(f'{_VOL0.value}, {_VOL1.value}: {e}') from None
  t2 = time.perf_counter()
  io.write_flow(_OUTPUT.value, flow)
  _say(f'wrote {_OUTPUT.value} {tuple(flow.shape)} (max |u| {abs(flow).max():.3g} voxel); estimation '
       f'{t2 - t1:.1f} s, total {time.perf_counter() - t0:.1f} s')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step at INFO
  try:
    run()
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print('error: interrupted; nothing written', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  app.run(main)
