"""The one answer to "what is this checkpoint path": every loader (load, init_from, evaluation, export) asks here.

A path is, in this order: the name of shipped weights (raftdvc_jax.weights, unless a file or folder of that
name exists), a training run directory (WORKDIR with checkpoints/) or its checkpoints/ directory (the
`which` step: best by validation EPE, or latest; the newest that loads when that one is damaged), a step or
converted directory (model_config.json + variables/), or a RAFT-DVC / VolRAFT .pth/.pt file, read without
executing anything in it and converted in memory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from raftdvc_jax import weights
from raftdvc_jax.convert import orbax_io
from raftdvc_jax.convert import runs
from raftdvc_jax.model.config import ModelConfig

KINDS = ('shipped', 'run', 'converted', 'pytorch')


@dataclasses.dataclass(frozen=True)
class Resolved:
  """What a checkpoint path holds: its kind, model config, variables (numpy) and provenance."""

  kind: str            # one of KINDS
  config: ModelConfig
  variables: dict      # {'params'[, 'batch_stats']}
  provenance: dict
  path: str            # the directory or file the variables came from (a run's step directory)


def _is_run(path: str) -> bool:
  if os.path.isdir(os.path.join(path, runs.CHECKPOINTS)):
    return True
  return os.path.basename(os.path.normpath(path)) == runs.CHECKPOINTS or bool(runs.step_dirs(path))


def resolve(path, which: str = 'best', fmt: str = 'auto', volraft_config: Optional[str] = None,
            encoder_type: Optional[str] = None, sampler: Optional[str] = None) -> Resolved:
  """Resolved(kind, config, variables, provenance, path) of a checkpoint path or shipped weight name.

  which picks a training run's step ('best' or 'latest'); fmt, volraft_config, encoder_type and sampler
  describe a .pth/.pt (convert.sources.load_source). Raises ValueError/OSError in one line naming the file.
  """
  given = os.fspath(path)
  path = weights.resolve(given)
  kind = 'shipped' if path != given else None
  if os.path.isdir(path):
    # A run directory also holds a model_config.json, so its checkpoints/ are looked for first.
    if kind is None and not os.path.isdir(os.path.join(path, orbax_io.VARIABLES_DIR)) and _is_run(path):
      step_dir, (config, variables, provenance) = runs.load_run(path, which)
      return Resolved('run', config, variables, dict(provenance, step_dir=step_dir), step_dir)
    config, variables, provenance = orbax_io.load_variables(path)
    return Resolved(kind or 'converted', config, variables, provenance, os.path.abspath(path))
  if os.path.isfile(path):
    from raftdvc_jax.convert import sources  # pylint: disable=import-outside-toplevel
    source = sources.load_source(path, fmt, volraft_config, encoder_type, sampler)
    return Resolved('pytorch', source.config, sources.to_variables(source), source.provenance(),
                    os.path.abspath(path))
  weights.check(given)  # no such file or folder, nor shipped weights: says which names ship
  raise FileNotFoundError(f'{given}: no such file or directory')  # unreachable unless the files vanished

