"""PyTorch state dict <-> Flax variables of RAFTDVC, as one rename table plus a strict diff.

Flax paths mirror the PyTorch module paths (see model/), so a name maps by a few textual rules and a
tensor by one layout rule (conv weights (O, I, k0, k1, k2) <-> kernels (k0, k1, k2, I, O)).
"""

from __future__ import annotations

import functools
import re
from typing import Mapping

import jax
import numpy as np
from flax import traverse_util

from raftdvc_jax.model.config import ModelConfig
from raftdvc_jax.model.raft import init_params

# Flax '<collection>/<dotted path>' -> PyTorch key, applied in order.
RENAMES = [
    (r'^params/(.*)\.kernel$', r'\1.weight'),
    (r'^params/(.*)\.scale$', r'\1.weight'),
    (r'^params/(.*)\.bias$', r'\1.bias'),
    (r'^batch_stats/(.*)\.mean$', r'\1.running_mean'),
    (r'^batch_stats/(.*)\.var$', r'\1.running_var'),
    (r'\.layer(\d)_(\d)\.', r'.layer\1.\2.'),
    (r'\.downsample\.', r'.downsample.0.'),
]
# VolRAFT's NetworkVolRAFT keeps the net in `.module` and its context encoder has no `.encoder` level.
VOLRAFT_RENAMES = [(r'^', 'module.'), (r'^module\.cnet\.encoder\.', 'module.cnet.')]
# PyTorch registers a bottleneck's norm4 twice: as `norm4` and as `downsample.1`.
ALIAS = (r'\.norm4\.', '.downsample.1.')
# Batch norms also carry a step counter that Flax does not keep.
COUNTER = (r'\.running_mean$', '.num_batches_tracked')


class MappingError(ValueError):
  """A state dict that does not match the model config: lists missing, unexpected and mis-shaped keys."""


def torch_key(flax_key: str, config: ModelConfig) -> str:
  """The PyTorch name of a Flax variable given as '<collection>/<dotted.path>'."""
  key = flax_key
  for pattern, repl in RENAMES + (VOLRAFT_RENAMES if config.volraft else []):
    key = re.sub(pattern, repl, key)
  return key


def _to_torch_layout(x: np.ndarray) -> np.ndarray:
  return x.transpose(4, 3, 0, 1, 2) if x.ndim == 5 else x


def _to_flax_layout(x: np.ndarray) -> np.ndarray:
  return x.transpose(2, 3, 4, 1, 0) if x.ndim == 5 else x


@functools.lru_cache(maxsize=16)
def _template(config: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  return {'/'.join([path[0], '.'.join(path[1:])]): leaf
          for path, leaf in traverse_util.flatten_dict(shapes).items()}


def expected_keys(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every PyTorch key the config's network has, with its shape."""
  out = {}
  for fkey, leaf in _template(config).items():
    shape = _to_torch_layout(np.empty(leaf.shape, np.bool_)).shape
    tkey = torch_key(fkey, config)
    out[tkey] = shape
    if re.search(ALIAS[0], tkey):
      out[re.sub(ALIAS[0], ALIAS[1], tkey)] = shape
  for tkey in list(out):
    if re.search(COUNTER[0], tkey):
      out[re.sub(COUNTER[0], COUNTER[1], tkey)] = ()
  return out


def diff(state_dict: Mapping[str, np.ndarray], config: ModelConfig) -> tuple[list, list, list]:
  """(missing, unexpected, mis-shaped) keys of a state dict against the config's network."""
  expected = expected_keys(config)
  missing = sorted(set(expected) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(expected))
  misshaped = sorted((k, tuple(np.shape(state_dict[k])), expected[k]) for k in set(expected) & set(state_dict)
                     if tuple(np.shape(state_dict[k])) != expected[k])
  return missing, unexpected, misshaped


def describe(missing, unexpected, wrong, wrong_label: str = 'mis-shaped') -> str:
  """One line summarising a key diff: counts and the first few names of each kind."""
  parts = []
  if missing:
    parts.append(f'{len(missing)} missing (e.g. {", ".join(missing[:3])})')
  if unexpected:
    parts.append(f'{len(unexpected)} unexpected (e.g. {", ".join(unexpected[:3])})')
  if wrong:
    parts.append(f'{len(wrong)} {wrong_label} (e.g. {", ".join(wrong[:3])})')
  return '; '.join(parts)


def check(state_dict: Mapping[str, np.ndarray], config: ModelConfig) -> None:
  """Raises MappingError with a readable diff unless the state dict fits the config exactly."""
  missing, unexpected, misshaped = diff(state_dict, config)
  if missing or unexpected or misshaped:
    wrong = [f'{k} is {a} but the config needs {b}' for k, a, b in misshaped]
    raise MappingError('state dict does not match the model config: ' + describe(missing, unexpected, wrong))


def from_torch(state_dict: Mapping[str, np.ndarray], config: ModelConfig) -> dict:
  """Flax variables ({'params': ...[, 'batch_stats': ...]}) from a PyTorch state dict, strictly checked."""
  check(state_dict, config)
  flat = {}
  for fkey, leaf in _template(config).items():
    tkey = torch_key(fkey, config)
    value = np.asarray(state_dict[tkey])
    if re.search(ALIAS[0], tkey):
      alias = np.asarray(state_dict[re.sub(ALIAS[0], ALIAS[1], tkey)])
      if not np.array_equal(alias, value):
        raise MappingError(f'{tkey} and its alias {re.sub(ALIAS[0], ALIAS[1], tkey)} differ')
    collection, path = fkey.split('/')
    flat[(collection, *path.split('.'))] = _to_flax_layout(value).astype(leaf.dtype)
  return traverse_util.unflatten_dict(flat)


def to_torch(variables: Mapping, config: ModelConfig) -> dict[str, np.ndarray]:
  """A PyTorch state dict (numpy arrays, PyTorch names and layouts) from Flax variables."""
  out = {}
  for path, value in traverse_util.flatten_dict(jax.device_get(dict(variables))).items():
    tkey = torch_key('/'.join([path[0], '.'.join(path[1:])]), config)
    out[tkey] = np.ascontiguousarray(_to_torch_layout(np.asarray(value)))
    if re.search(ALIAS[0], tkey):
      out[re.sub(ALIAS[0], ALIAS[1], tkey)] = out[tkey]
  for tkey in [k for k in out if re.search(COUNTER[0], k)]:
    out[re.sub(COUNTER[0], COUNTER[1], tkey)] = np.zeros((), np.int64)
  check(out, config)
  return out
