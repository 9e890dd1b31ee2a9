"""Correlation lookup formulations, forward and forward+backward, per pyramid level.

  python tools/bench_lookup.py --grid 16 --levels 2 --radius 4

Times one lookup of every level of the all-pairs pyramid of a (grid^3) feature grid (the s2/s4/s8 arms all
have a 16^3 grid at their training size) with each formulation in raftdvc_jax/model/corr.py; medians of
--repeats runs after compilation. The gradient is taken with respect to the correlation volume, as in
training (the coordinates are detached).
"""

from __future__ import annotations


from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer('grid', 16, 'Side of the cubic feature grid.')
flags.DEFINE_integer('levels', 2, 'Pyramid levels.')
flags.DEFINE_integer('radius', 4, 'Lookup radius.')
flags.DEFINE_integer('repeats', 5, 'Timed runs per measurement.')
flags.DEFINE_string('sampler', 'exact', 'Sampler convention.')


def _median(fn, *args):
  """Median milliseconds of fn(*args) after a first (compiling) call."""
  import jax  # pylint: disable=import-outside-toplevel
  from raftdvc_jax import benchmark  # pylint: disable=import-outside-toplevel
  return 1e3 * benchmark.first_and_median(lambda: jax.block_until_ready(fn(*args)), FLAGS.repeats)[1]


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model import corr  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model.samplers import has_rescale  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  g = FLAGS.grid
  fmap = jnp.asarray(rng.normal(size=(1, g, g, g, 128)).astype(np.float32))
  pyramid = corr.AllPairsCorr.build(fmap, fmap, FLAGS.levels, FLAGS.radius, FLAGS.sampler)
  grid = np.stack(np.meshgrid(*[np.arange(g, dtype=np.float32)] * 3, indexing='ij'), -1).reshape(1, -1, 3)
  centroid = jnp.asarray(grid + rng.uniform(-3, 3, size=grid.shape).astype(np.float32))
  print(f'| level (shape) | method | forward ms | forward+backward ms |\n|---|---|---|---|')
  for i, level in enumerate(pyramid.levels):
    c = centroid / 2 ** i
    for method in ('reference', 'separable', 'slab'):
      if method == 'slab' and has_rescale(level.shape[2:], FLAGS.sampler):
        continue
      fwd = jax.jit(lambda lv, m=method: corr.lookup_level(lv, c, FLAGS.radius, FLAGS.sampler, m))
      w = jnp.ones((1, g ** 3) + (2 * FLAGS.radius + 1,) * 3)
      bwd = jax.jit(jax.grad(lambda lv, m=method: jnp.sum(w * corr.lookup_level(lv, c, FLAGS.radius,
                                                                                FLAGS.sampler, m))))
      print(f'| {i} {tuple(level.shape[2:])} | {method} | {_median(fwd, level):.1f} | {_median(bwd, level):.1f} |',
            flush=True)


if __name__ == '__main__':
  from raftdvc_jax import cli  # pylint: disable=g-import-not-at-top
  cli.start(main)  # --help exits 0
