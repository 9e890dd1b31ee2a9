"""The converted checkpoint directory: Orbax-saved variables plus the model config and provenance as JSON.

Layout of a directory written by `save` (and the minimum `load_variables` needs):

  model_config.json   ModelConfig.to_json()
  provenance.json     where the weights came from: source name and sha256, detected kind, notes, library
                      version, format version (optional for reading)
  variables/          an Orbax StandardCheckpointer item: {'params': ...[, 'batch_stats': ...]}, Flax layout

A training checkpoint directory can be read by the same function as long as it keeps this layout (the
variables item may then hold more collections; only 'params' and 'batch_stats' are returned). Writes are
atomic: everything goes into a hidden temporary directory beside the target, renamed into place at the end.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from typing import Any, Mapping

import numpy as np

from raftdvc_jax.atomic import atomic_path
from raftdvc_jax.model.config import ModelConfig

CONFIG_FILE = 'model_config.json'
PROVENANCE_FILE = 'provenance.json'
VARIABLES_DIR = 'variables'
FORMAT = 'raftdvc_jax.converted'
FORMAT_VERSION = 1
COLLECTIONS = ('params', 'batch_stats')
# Dtypes a directory may store float32 variables in, to halve its size (shipped weights); read back as float32.
STORAGE_DTYPES = ('float32', 'float16')


class CheckpointDirError(ValueError):
  """A converted checkpoint directory that is missing, malformed or does not fit its config."""


def is_checkpoint_dir(path) -> bool:
  """True when `path` is a directory with a model_config.json (what load_variables reads)."""
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def _flatten(tree: Mapping, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f'{prefix}/{key}' if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(_flatten(value, name))
    else:
      out[name] = value
  return out


@functools.lru_cache(maxsize=32)
def _template(config: ModelConfig) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model.raft import init_params  # pylint: disable=import-outside-toplevel
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def check_variables(variables: Mapping, config: ModelConfig, label: str) -> None:
  """Raises CheckpointDirError unless `variables` has exactly the config's variable names, shapes and dtypes."""
  want = _flatten(_template(config))
  got = _flatten({k: v for k, v in variables.items() if k in COLLECTIONS})
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(want) & set(got)
                 if tuple(np.shape(got[k])) != tuple(want[k].shape) or np.dtype(got[k].dtype) != want[k].dtype)
  if missing or unexpected or wrong:
    from raftdvc_jax.convert import mapping  # pylint: disable=import-outside-toplevel
    wrong = [f'{k} {tuple(np.shape(got[k]))} {np.dtype(got[k].dtype)} vs {tuple(want[k].shape)} {want[k].dtype}'
             for k in wrong]
    raise CheckpointDirError(f'{label}: variables do not match {CONFIG_FILE}: '
                             + mapping.describe(missing, unexpected, wrong, 'of the wrong shape or dtype'))


def save(path, config: ModelConfig, variables: Mapping, provenance: Mapping[str, Any] | None = None,
         overwrite: bool = False, before_commit=None, storage_dtype: str = 'float32') -> str:
  """Writes a converted checkpoint directory atomically and returns its absolute path.

  `before_commit(tmp_dir)` (optional) runs on the finished temporary directory before it is renamed into place,
  e.g. to verify it; if it raises, nothing is left at `path`. storage_dtype 'float16' stores the float32
  variables rounded to float16 (half the size; relative rounding <= 4.9e-4 per weight), recorded in the
  provenance and read back as float32: for shipped weights, not for weights whose exactness is the point.
  """
  if storage_dtype not in STORAGE_DTYPES:
    raise ValueError(f'storage_dtype must be one of {STORAGE_DTYPES}, got {storage_dtype!r}')
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f'{path}: already exists (pass overwrite / --overwrite to replace it)')
  if os.path.exists(path) and not os.path.isdir(path):
    raise CheckpointDirError(f'{path}: exists and is not a directory')
  check_variables(variables, config, path)
  with atomic_path(path) as tmp:  # renamed into place only if everything below succeeds
    os.makedirs(tmp)
    tree = {k: v for k, v in variables.items() if k in COLLECTIONS}
    if storage_dtype != 'float32':
      tree = _cast(tree, np.float32, np.dtype(storage_dtype))
    checkpointer = ocp.StandardCheckpointer()
    try:
      checkpointer.save(os.path.join(tmp, VARIABLES_DIR), tree)
      checkpointer.wait_until_finished()
    finally:
      checkpointer.close()
    record = {'format': FORMAT, 'format_version': FORMAT_VERSION, 'library_version': _version(),
              'created_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
              **dict(provenance or {}), 'storage_dtype': storage_dtype}
    with open(os.path.join(tmp, CONFIG_FILE), 'w') as f:
      f.write(json.dumps(config.to_dict(), indent=2, sort_keys=True) + '\n')
    with open(os.path.join(tmp, PROVENANCE_FILE), 'w') as f:
      f.write(json.dumps(record, indent=2, sort_keys=True) + '\n')
    if before_commit is not None:
      before_commit(tmp)
  return path


def read_config(path) -> ModelConfig:
  """The ModelConfig stored in a checkpoint directory."""
  path = os.fspath(path)
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no such checkpoint directory')
  if not os.path.isfile(file):
    raise CheckpointDirError(f'{path}: not a converted checkpoint (no {CONFIG_FILE})')
  try:
    with open(file) as f:
      data = json.load(f)
    if not isinstance(data, dict):
      raise ValueError('not a JSON object')
    return ModelConfig.from_dict(data)
  except (ValueError, TypeError) as e:
    raise CheckpointDirError(f'{file}: invalid model config ({e})') from None


def load_variables(path) -> tuple[ModelConfig, dict, dict]:
  """(config, variables, provenance) of a converted (or same-layout training) checkpoint directory.

  variables = {'params': ...[, 'batch_stats': ...]} as numpy arrays, checked against the config.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(os.fspath(path))
  config = read_config(path)
  provenance = {}
  prov_file = os.path.join(path, PROVENANCE_FILE)
  if os.path.isfile(prov_file):
    try:
      with open(prov_file) as f:
        provenance = json.load(f)
    except ValueError as e:
      raise CheckpointDirError(f'{prov_file}: invalid JSON ({e})') from None
  item = os.path.join(path, VARIABLES_DIR)
  if not os.path.isdir(item):
    raise CheckpointDirError(f'{path}: not a converted checkpoint (no {VARIABLES_DIR}/ directory)')
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    # Restored as host numpy arrays in the stored shapes (checked below, not silently adapted), whatever
    # device placement they were saved with: a training run saves arrays on its mesh, and restoring that
    # placement fails on every process that does not hold those devices (multi-process inference).
    import jax  # pylint: disable=import-outside-toplevel
    stored = checkpointer.metadata(item).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
    restored = checkpointer.restore(item, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  except Exception as e:  # pylint: disable=broad-except
    # Orbax raises many types (ValueError, FileNotFoundError, tensorstore errors) for damaged items.
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CheckpointDirError(f'{item}: cannot read the Orbax checkpoint ({message[:200]})') from None
  finally:
    checkpointer.close()
  if not isinstance(restored, Mapping) or 'params' not in restored:
    raise CheckpointDirError(f'{item}: holds no "params" collection')
  variables = {k: _as_dict(restored[k]) for k in COLLECTIONS if k in restored}
  if provenance.get('storage_dtype', 'float32') != 'float32':  # stored smaller; the model computes in float32
    variables = _cast(variables, np.dtype(provenance['storage_dtype']), np.float32)
  check_variables(variables, config, path)
  return config, variables, provenance


def _cast(tree, src, dst):
  """`tree` with every array of dtype `src` cast to `dst` (others, e.g. integer counters, unchanged)."""
  if isinstance(tree, Mapping):
    return {k: _cast(v, src, dst) for k, v in tree.items()}
  return np.asarray(tree).astype(dst) if np.asarray(tree).dtype == src else tree


def _as_dict(tree):
  if isinstance(tree, Mapping):
    return {k: _as_dict(v) for k, v in tree.items()}
  return np.asarray(tree)


def _version() -> str:
  from raftdvc_jax.version import __version__  # pylint: disable=import-outside-toplevel
  return __version__
