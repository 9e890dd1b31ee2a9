"""The train state (step, variables, optimizer state, RNG), the optimizer, and weights to start from."""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax

from raftdvc_jax.model.config import ModelConfig
from raftdvc_jax.model.raft import init_params

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. `rng` is raw key data (uint32[2]) so that it checkpoints as a plain array."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array

  @property
  def variables(self) -> dict[str, Any]:
    """The model variables: {'params'[, 'batch_stats']}."""
    out = {'params': self.params}
    if self.batch_stats:
      out['batch_stats'] = self.batch_stats
    return out


def optimizer(schedule, weight_decay: float = 5e-5, clip_norm: float = 1.0, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-8) -> optax.GradientTransformation:
  """clip_by_global_norm then AdamW: torch's clip_grad_norm_ + AdamW (decoupled decay scaled by the lr)."""
  parts = []
  if clip_norm and clip_norm > 0:
    parts.append(optax.clip_by_global_norm(clip_norm))
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return optax.chain(*parts)


@functools.lru_cache(maxsize=2)
def initial_variables(config: ModelConfig, seed: int) -> dict[str, Any]:
  """init_params(config) from `seed`, as host arrays, compiled unoptimised; cached, so fresh runs in one
  process initialise once."""
  init_key = jax.random.split(jax.random.key(seed))[0]
  return jax.device_get(init_params(config, init_key, optimize=False))


def create(config: ModelConfig, tx: optax.GradientTransformation, seed: int, variables=None) -> TrainState:
  """A fresh state at step 0: variables initialised from `seed` unless given (e.g. converted weights)."""
  state_key = jax.random.split(jax.random.key(seed))[1]
  if variables is None:
    variables = initial_variables(config, seed)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params), rng=jax.random.key_data(state_key))


def abstract(config: ModelConfig, tx: optax.GradientTransformation) -> TrainState:
  """The shapes and dtypes of a state (jax.ShapeDtypeStruct leaves), without computing anything."""
  return jax.eval_shape(lambda: create(config, tx, 0, variables=init_params(config, jax.random.key(0))))


def load_pretrained(path, config: ModelConfig) -> dict[str, Any]:
  """Variables to fine-tune from: a RAFT-DVC/VolRAFT .pth/.pt, a converted directory, a training run or the
  name of shipped weights (e.g. 's4-starter').

  The weights must have exactly the shapes `config` implies; fields that differ without changing a shape
  (encoder stride, sampler, iterations) are logged as a warning and the training config wins.
  """
  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.convert import orbax_io
  from raftdvc_jax.convert.resolve import resolve
  try:
    found = resolve(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'init_from: {e}') from None
  path, source_config, variables = found.path, found.config, found.variables
  try:
    orbax_io.check_variables(variables, config, f'{path} (init_from)')
  except ValueError as e:
    raise ValueError(f'{e}; the weights were saved for {source_config.to_json()}') from None
  differ = {k: (v, getattr(config, k)) for k, v in source_config.to_dict().items() if getattr(config, k) != v}
  if differ:
    log.warning('init_from %s: training config differs from the weights\' in %s', path,
                ', '.join(f'{k} ({a!r} -> {b!r})' for k, (a, b) in sorted(differ.items())))
  return {k: jax.tree.map(jnp.asarray, v) for k, v in variables.items() if isinstance(v, Mapping)}
