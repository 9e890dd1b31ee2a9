"""Learned digital volume correlation (RAFT-DVC, VolRAFT) in JAX/Flax.

  import raftdvc_jax
  estimator = raftdvc_jax.load('converted_dir')      # or a RAFT-DVC / VolRAFT .pth/.pt file
  flow = estimator(vol0, vol1)                       # float32 (3, X0, X1, X2), channel c = axis c

Importing the package is light; jax is imported when a model is loaded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

from raftdvc_jax.model.config import ModelConfig

if TYPE_CHECKING:
  from raftdvc_jax.infer.estimator import FlowEstimator

__version__ = '0.1.0'
__all__ = ['FlowEstimator', 'ModelConfig', 'load', 'refine', '__version__']


def load(path, fmt: str = 'auto', volraft_config: Optional[str] = None, encoder_type: Optional[str] = None,
         sampler: Optional[str] = None, corr_method: str = 'auto', dtype=None,
         which: str = 'best') -> 'FlowEstimator':
  """A FlowEstimator from shipped weights ('s4-starter'), a converted directory or a RAFT-DVC/VolRAFT .pth/.pt.

  A training run directory loads its `which` step ('best' by validation EPE, or 'latest'), or the newest
  step that loads when that one is damaged, and logs which. A file is read without executing any
  code in it and converted in memory (see tools/convert_volraft.py for fmt, volraft_config, encoder_type
  and sampler). Raises ValueError/OSError with one line naming the file.
  """
  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.convert import orbax_io
  from raftdvc_jax.infer.estimator import FlowEstimator as Estimator
  from raftdvc_jax import weights
  path = weights.resolve(path)  # a shipped weight name such as 's4-starter', unless such a path exists
  if os.path.isdir(path):
    if os.path.isdir(os.path.join(path, 'checkpoints')):  # a training run: its best (or latest) step that loads
      from raftdvc_jax.train.checkpoint import load_run
      path, (config, variables, provenance) = load_run(path, which)
      provenance = dict(provenance, step_dir=path)
    else:
      config, variables, provenance = orbax_io.load_variables(path)
  elif os.path.isfile(path):
    from raftdvc_jax.convert import sources
    source = sources.load_source(path, fmt, volraft_config, encoder_type, sampler)
    config, variables, provenance = source.config, sources.to_variables(source), source.provenance()
  else:
    raise FileNotFoundError(f'{path}: no such file or directory')
  return Estimator(config, variables, corr_method=corr_method, dtype=dtype, provenance=provenance)


def __getattr__(name):
  if name == 'FlowEstimator':
    from raftdvc_jax.infer.estimator import FlowEstimator as Estimator  # pylint: disable=import-outside-toplevel
    return Estimator
  if name == 'refine':  # the subpackage, callable as raftdvc_jax.refine(vol0, vol1, flow_init=None, ...)
    import importlib  # pylint: disable=import-outside-toplevel
    return importlib.import_module('raftdvc_jax.refine')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
