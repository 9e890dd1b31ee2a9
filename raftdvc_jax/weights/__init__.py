"""Weights shipped inside the package, by name: `raftdvc_jax.load('s4-starter')`.

Each name is a converted checkpoint directory beside this file (model_config.json, provenance.json,
variables/) with a MODEL_CARD.md that gives its recipe and measured accuracy.
"""

from __future__ import annotations

import os

# name -> one line for --help and error messages
NAMES = {
    's4-starter': 'RAFT-DVC s4 arm trained from scratch on 2 CPU cores (bead pairs, |u| up to ~4 voxels); '
                  'see raftdvc_jax/weights/s4-starter/MODEL_CARD.md',
    's8-starter': 'RAFT-DVC s8 arm trained from scratch on 2 CPU cores (bead pairs, moves up to ~24 voxels), the '
                  'coarse arm of --coarse_checkpoint s8-starter --checkpoint s4-starter; see '
                  'raftdvc_jax/weights/s8-starter/MODEL_CARD.md',
}
DEFAULT = 's4-starter'


def directory(name: str) -> str:
  """The directory of shipped weights `name`; ValueError naming the choices when it is not one."""
  if name not in NAMES:
    raise ValueError(f'{name!r} is not a shipped weight name; choose from {", ".join(NAMES)}')
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
  if not os.path.isdir(os.path.join(path, 'variables')):
    raise FileNotFoundError(f'{path}: the shipped weights {name!r} are missing from this installation')
  return path


def resolve(path) -> str:
  """`path` itself when it exists, else the directory of the shipped weights of that name."""
  path = os.fspath(path)
  if os.path.exists(path) or path not in NAMES:
    return path
  return directory(path)


def check(path) -> None:
  """Raises FileNotFoundError, in one line, unless `path` exists or names shipped weights."""
  path = os.fspath(path)
  if not os.path.exists(path) and path not in NAMES:
    raise FileNotFoundError(f'{path}: no such file or directory, nor shipped weights (shipped: {", ".join(NAMES)})')
  resolve(path)  # a shipped name whose files are missing from this installation says so


def describe() -> str:
  """'name: description' lines of every shipped weight, for --help."""
  return '; '.join(f'{name}: {text}' for name, text in NAMES.items())
