"""Learned digital volume correlation (RAFT-DVC, VolRAFT) in JAX/Flax.

  import raftdvc_jax
  estimator = raftdvc_jax.load('converted_dir')      # or a RAFT-DVC / VolRAFT .pth/.pt file
  flow = estimator(vol0, vol1)                       # float32 (3, X0, X1, X2), channel c = axis c

Importing the package is light; jax is imported when a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from raftdvc_jax.model.config import ModelConfig
from raftdvc_jax.version import __version__

if TYPE_CHECKING:
  from raftdvc_jax.infer.estimator import FlowEstimator

__all__ = ['FlowEstimator', 'ModelConfig', 'load', 'refine', '__version__']


def load(path, fmt: str = 'auto', volraft_config: Optional[str] = None, encoder_type: Optional[str] = None,
         sampler: Optional[str] = None, correlation: str = 'auto', dtype=None,
         which: str = 'best', lookup: str = 'auto') -> 'FlowEstimator':
  """A FlowEstimator from shipped weights ('s4-starter'), a converted directory, a training run or a .pth/.pt.

  raftdvc_jax.infer.estimator.load; the path is resolved by raftdvc_jax.convert.resolve.
  """
  from raftdvc_jax.infer.estimator import load as load_estimator  # pylint: disable=import-outside-toplevel
  return load_estimator(path, fmt, volraft_config, encoder_type, sampler, correlation, dtype, which, lookup)


def __getattr__(name):
  if name == 'FlowEstimator':
    from raftdvc_jax.infer.estimator import FlowEstimator as Estimator  # pylint: disable=import-outside-toplevel
    return Estimator
  if name == 'refine':  # the subpackage, callable as raftdvc_jax.refine(vol0, vol1, flow_init=None, ...)
    import importlib  # pylint: disable=import-outside-toplevel
    return importlib.import_module('raftdvc_jax.refine')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
