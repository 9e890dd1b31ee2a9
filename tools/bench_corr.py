"""All-pairs against memory-light 'local' correlation: lookup time and memory per feature grid, or a whole model.

  python tools/bench_corr.py --grids 16,24,32,48             # one lookup of every level, per grid size
  python tools/bench_corr.py --model s2 --size 96 --iters 12  # the s2 arm on a whole 96^3 pair, local

Per grid: the time of one jitted build + lookup of a (grid^3, 128-channel) feature pair (median of
--repeats after compilation), and XLA's own temporary-buffer size of that compiled program, for each
method. All-pairs is only run where its estimate is under --max_allpairs_gib (its memory is always
reported). The lookup coordinates follow a smooth flow (--flow smooth: tiles share blocks) or i.i.d.
jumps of up to 3 voxels (--flow wild: the per-query fallback). With --model, one forward of that preset
with correlation='local' on a synthetic bead pair; it reports time and the process's peak RSS, so run it
in a process of its own.
"""

from __future__ import annotations

import resource
import statistics
import time

from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list('grids', ['16', '24', '32', '48'], 'Sides of the cubic feature grids.')
flags.DEFINE_integer('levels', 2, 'Pyramid levels.')
flags.DEFINE_integer('radius', 4, 'Lookup radius.')
flags.DEFINE_integer('channels', 128, 'Feature channels.')
flags.DEFINE_integer('repeats', 2, 'Timed runs per measurement.')
flags.DEFINE_enum('flow', 'smooth', ['smooth', 'wild'], 'Lookup coordinates: smooth flow or i.i.d. jumps.')
flags.DEFINE_float('max_allpairs_gib', 6.0, 'Run all-pairs only where XLA estimates less memory than this.')
flags.DEFINE_boolean('backward', False, 'Also time forward+backward (gradient to both feature maps).')
flags.DEFINE_string('model', '', 'If set, a preset (s2, s4, s8): time one forward of the model instead.')
flags.DEFINE_integer('size', 96, 'Volume side for --model.')
flags.DEFINE_integer('iters', 12, 'Iterations for --model.')
flags.DEFINE_enum('correlation', 'local', ['local', 'allpairs'], 'Correlation for --model.')


def _median(fn, *args):
  import jax  # pylint: disable=import-outside-toplevel
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_rss_gib() -> float:
  """This process's peak resident memory in GiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def lookup_inputs(grid: int, channels: int, flow: str, seed: int = 0):
  """Random feature maps (1, g, g, g, C) and lookup coords (1, g, g, g, 3) along a smooth or wild flow."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  f0, f1 = (jnp.asarray(rng.normal(size=(1, grid, grid, grid, channels)), jnp.float32) for _ in range(2))
  pos = np.stack(np.meshgrid(*[np.arange(grid, dtype=np.float32)] * 3, indexing='ij'), -1)
  if flow == 'smooth':
    disp = 3.0 * np.sin(pos[..., ::-1] / 7.0 + np.arange(3)) + 0.3
  else:
    disp = rng.uniform(-3, 3, size=pos.shape)
  return f0, f1, jnp.asarray(pos[None] + disp, jnp.float32)


def lookup_row(grid: int, method: str, run: bool):
  """(time s or None, XLA temp GiB, time fwd+bwd s or None) of one build + lookup at this grid."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model import corr  # pylint: disable=import-outside-toplevel
  f0, f1, coords = lookup_inputs(grid, FLAGS.channels, FLAGS.flow)

  def forward(a, b, c):
    return corr.build(a, b, FLAGS.levels, FLAGS.radius, 'exact', method)(c)

  fwd = jax.jit(forward)
  temp = fwd.lower(f0, f1, coords).compile().memory_analysis().temp_size_in_bytes / 2**30
  if not run:
    return None, temp, None
  seconds = _median(fwd, f0, f1, coords)
  both = None
  if FLAGS.backward:
    grad = jax.jit(jax.grad(lambda a, b, c: jnp.sum(forward(a, b, c) ** 2), argnums=(0, 1)))
    both = _median(grad, f0, f1, coords)
  return seconds, temp, both


def model_run() -> str:
  """One forward of a preset on a synthetic bead pair of --size^3; a line with time and peak RSS."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model.config import preset  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model.raft import RAFTDVC, init_params  # pylint: disable=import-outside-toplevel
  cfg = preset(FLAGS.model)
  pair = synthetic.make_pair(synthetic.preset('r4_64', size=FLAGS.size), 0)
  vol0, vol1 = (np.asarray(pair[k], np.float32)[None] for k in ('I1', 'I2'))
  variables = init_params(cfg, jax.random.key(0))
  model = RAFTDVC(cfg, correlation=FLAGS.correlation)
  fwd = jax.jit(lambda v, a, b: model.apply(v, a, b, iters=FLAGS.iters).flow)
  start = time.perf_counter()
  jax.block_until_ready(fwd(variables, vol0, vol1))
  first = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(fwd(variables, vol0, vol1))
  second = time.perf_counter() - start
  return (f'{FLAGS.model} {FLAGS.size}^3, {FLAGS.iters} iterations, correlation={FLAGS.correlation}: '
          f'first call (with compile) {first:.1f} s, second {second:.1f} s, peak RSS {peak_rss_gib():.2f} GiB')


def main(argv):
  del argv
  if FLAGS.model:
    print(model_run(), flush=True)
    return
  print(f'levels {FLAGS.levels}, radius {FLAGS.radius}, {FLAGS.channels} channels, {FLAGS.flow} flow\n'
        '| grid | queries | all-pairs s | all-pairs XLA temp GiB | local s | local XLA temp GiB |'
        + (' all-pairs fwd+bwd s | local fwd+bwd s |' if FLAGS.backward else '') + '\n'
        '|---|---|---|---|---|---|' + ('---|---|' if FLAGS.backward else ''))
  fmt = lambda x: '-' if x is None else f'{x:.2f}'
  for g in (int(x) for x in FLAGS.grids):
    _, ap_temp, _ = lookup_row(g, 'allpairs', run=False)
    ap = lookup_row(g, 'allpairs', run=True) if ap_temp < FLAGS.max_allpairs_gib else (None, ap_temp, None)
    lo = lookup_row(g, 'local', run=True)
    row = f'| {g}^3 | {g ** 3} | {fmt(ap[0])} | {ap[1]:.3f} | {fmt(lo[0])} | {lo[1]:.3f} |'
    if FLAGS.backward:
      row += f' {fmt(ap[2])} | {fmt(lo[2])} |'
    print(row, flush=True)


if __name__ == '__main__':
  from raftdvc_jax import cli  # pylint: disable=g-import-not-at-top
  cli.start(main)  # --help exits 0
