"""Export a training run's best (or latest) step as a converted checkpoint directory, e.g. shipped weights."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from raftdvc_jax.convert import orbax_io
from raftdvc_jax.convert import resolve
from raftdvc_jax.train import checkpoint as ckpt_lib
from raftdvc_jax.train import curves


def _records(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, 'metrics.jsonl')
  return curves.read_metrics(path, allow_empty=True) if os.path.isfile(path) else []


def _train_data(workdir: str) -> dict[str, Any] | None:
  """The synthetic data config of a run (its config.json), or None for dataset runs and older runs."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    data = json.load(f).get('data', {})
  return None if data.get('dir') else data.get('synthetic')


def export_run(workdir, output, which: str = 'best', iters: int | None = None, overwrite: bool = False,
               notes: Mapping[str, Any] | None = None, storage_dtype: str = 'float32') -> str:
  """Writes the params of `workdir`'s best/latest step to `output` (orbax_io layout); returns the path.

  iters: the iteration count stored in the exported model config (inference default), if not the run's.
  Provenance records the run, the step, its validation record and `notes`. storage_dtype 'float16' halves
  the directory (orbax_io.save), as the shipped weights are stored.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  found = resolve.resolve(workdir, which)
  is_step = (os.path.basename(os.path.dirname(found.path)) == ckpt_lib.CHECKPOINTS
             and os.path.basename(found.path).isdigit())
  if found.kind != 'run' and not is_step:
    raise ValueError(f'{workdir}: not a training run or one of its step directories (no '
                     f'{ckpt_lib.CHECKPOINTS}/<step>/)')
  step_dir, config, variables = found.path, found.config, found.variables
  if iters:
    config = config.replace(iters=int(iters))
  step = int(os.path.basename(step_dir))
  record = next((r for r in _records(workdir) if r.get('step') == step and 'val_epe' in r), {})
  provenance = {'source': 'raftdvc_jax training run', 'run': os.path.basename(workdir), 'step': step,
                'selected': which, 'validation': {k: v for k, v in record.items() if k.startswith('val_')},
                **dict(notes or {})}
  train_data = _train_data(workdir)
  if train_data:  # what the weights saw: the demo draws its pair from it
    provenance['train_data'] = train_data
  return orbax_io.save(output, config, {'params': variables['params']}, provenance, overwrite=overwrite,
                       storage_dtype=storage_dtype)
