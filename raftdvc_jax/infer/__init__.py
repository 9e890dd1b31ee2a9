"""Flow estimation with trained weights: FlowEstimator (whole volume and tiled) and the tiled runner beside it.

  estimator = raftdvc_jax.load('CKPT')
  flow = estimator(vol0, vol1)                              # whole volume, (3, X0, X1, X2) float32
  flow = estimator.tiled(vol0, vol1, tile=64, overlap=0.5)  # blended tiles, batched over the devices

tiling (plans, blend weights, stitching), coarse_to_fine, strategies and demo are numpy-only helpers;
memory (device memory per tile, batch choice), tiled (the runner) and estimator import jax.
"""

__all__ = ['FlowEstimator']


def __getattr__(name):
  # Lazy, so that numpy-only helpers in this package can be imported without pulling in jax.
  if name == 'FlowEstimator':
    from raftdvc_jax.infer.estimator import FlowEstimator  # pylint: disable=import-outside-toplevel
    return FlowEstimator
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
