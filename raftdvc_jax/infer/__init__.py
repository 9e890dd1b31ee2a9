"""Flow estimation with trained weights: FlowEstimator (whole volume; tiling lives beside it)."""

__all__ = ['FlowEstimator']


def __getattr__(name):
  # Lazy, so that numpy-only helpers in this package can be imported without pulling in jax.
  if name == 'FlowEstimator':
    from raftdvc_jax.infer.estimator import FlowEstimator  # pylint: disable=import-outside-toplevel
    return FlowEstimator
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
