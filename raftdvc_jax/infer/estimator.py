"""Whole-volume flow estimation with a fixed set of weights, compiled once per volume shape."""

from __future__ import annotations

import collections
import functools
import threading
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from raftdvc_jax.model.config import ModelConfig
from raftdvc_jax.model.raft import RAFTDVC


# (config, volume shape, iters) -> how many times the network was traced for it; 1 once compiled.
TRACES: collections.Counter = collections.Counter()


@functools.lru_cache(maxsize=16)
def _flow_fn(config: ModelConfig, corr_method: str, dtype, iters: int) -> Callable:
  """A jitted (variables, vol0, vol1) -> flow (3, X0, X1, X2); shared by every estimator with this config."""
  model = RAFTDVC(config, corr_method=corr_method, dtype=dtype)

  def run(variables, vol0, vol1):
    TRACES[config, tuple(vol0.shape), iters] += 1  # runs at trace time only
    out = model.apply(variables, vol0[None], vol1[None], iters=iters)
    return jnp.moveaxis(out.flow[0], -1, 0)  # channel-last on device -> (3, X0, X1, X2) for the caller

  return jax.jit(run)


def _as_volume(v: Any, name: str) -> np.ndarray:
  a = np.asarray(v)
  if a.ndim != 3:
    raise ValueError(f'{name} must be a 3-D volume (X0, X1, X2), got shape {a.shape}')
  if a.dtype.kind not in 'biuf':
    raise ValueError(f'{name} must hold numbers, got dtype {a.dtype}')
  return a.astype(np.float32, copy=False)


class FlowEstimator:
  """Estimates the displacement field between two volumes with one network and its weights.

  `estimator(vol0, vol1)` returns float32 (3, X0, X1, X2): channel c is the displacement along array axis c,
  from the reference vol0 to the deformed vol1 (vol1(x + u(x)) ~ vol0(x)). The network is compiled once per
  (volume shape, iterations) and reused; the weights stay on the device between calls.
  """

  def __init__(self, config: ModelConfig, variables: Mapping, corr_method: str = 'auto', dtype=None,
               provenance: Optional[Mapping[str, Any]] = None):
    if not isinstance(config, ModelConfig):
      raise TypeError(f'config must be a ModelConfig, got {type(config).__name__}')
    if 'params' not in variables:
      raise ValueError('variables must hold a "params" collection')
    self._config = config
    # iters is passed per call, so configs that differ only in their default share one compiled function.
    self._net_config = config.replace(iters=1)
    self._corr_method = corr_method
    self._dtype = dtype
    self._variables = jax.device_put({k: v for k, v in variables.items() if k in ('params', 'batch_stats')})
    self.provenance = dict(provenance or {})
    self._lock = threading.Lock()

  @property
  def config(self) -> ModelConfig:
    return self._config

  @property
  def params(self):
    """The network parameters (Flax layout, on the device)."""
    return self._variables['params']

  @property
  def variables(self):
    """All variable collections ({'params'[, 'batch_stats']}) as the model's apply takes them."""
    return self._variables

  def _iters(self, iters) -> int:
    if iters is None:
      return self._config.iters
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1:
      raise ValueError(f'iters must be a positive integer, got {iters!r}')
    return int(iters)

  def check_inputs(self, vol0, vol1) -> tuple[np.ndarray, np.ndarray]:
    """float32 copies (or views) of a valid volume pair; ValueError naming the problem otherwise."""
    if self._config.input_channels != 1:
      raise ValueError(f'this network takes {self._config.input_channels}-channel volumes; FlowEstimator runs '
                       'single-channel ones only')
    a, b = _as_volume(vol0, 'vol0'), _as_volume(vol1, 'vol1')
    if a.shape != b.shape:
      raise ValueError(f'vol0 and vol1 differ in shape: {a.shape} vs {b.shape}')
    if min(a.shape) < self._config.min_size:
      raise ValueError(f'volume {a.shape} is too small for this network: every side must be >= '
                       f'{self._config.min_size} (stride {self._config.stride}, {self._config.corr_levels} '
                       'correlation levels)')
    for name, v in (('vol0', a), ('vol1', b)):
      if not np.isfinite(v).all():
        raise ValueError(f'{name} holds non-finite values (NaN or inf)')
    return a, b

  def traces(self, shape, iters: Optional[int] = None) -> int:
    """How often the network was traced for this volume shape and iteration count (1 after the first call)."""
    return TRACES[self._net_config, tuple(shape), self._iters(iters)]

  def __call__(self, vol0, vol1, iters: Optional[int] = None) -> np.ndarray:
    """Flow (3, X0, X1, X2) float32 from vol0 to vol1, whole volume in one pass."""
    iters = self._iters(iters)
    a, b = self.check_inputs(vol0, vol1)
    fn = _flow_fn(self._net_config, self._corr_method, self._dtype, iters)
    with self._lock:  # one device call at a time; jit's cache is keyed by the input shape
      flow = fn(self._variables, a, b)
      return np.asarray(jax.device_get(flow), dtype=np.float32)

  def __repr__(self) -> str:
    c = self._config
    return (f'FlowEstimator(encoder_type={c.encoder_type!r}, stride={c.stride}, corr_levels={c.corr_levels}, '
            f'corr_radius={c.corr_radius}, sampler={c.sampler!r}, volraft={c.volraft}, iters={c.iters})')
