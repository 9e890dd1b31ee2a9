r"""The GPU checks in one run: model throughput, a 512^3 tiled run, local vs all-pairs memory; one table.

  python tools/bench_gpu.py                 # on one GPU; aims at under 8 minutes on an H100/H200-class card
  python tools/bench_gpu.py --quick         # tiny sizes and narrow models: exercises every path on a CPU

Rows:
  forward / train     s2, s4, s8 at their training sizes (32^3, 64^3, 128^3: a 16^3 feature grid each),
                      float32 and bfloat16 convolutions, --batch pairs, 12 iterations: median seconds of
                      --repeats calls after a compiling one, and pairs per second. The train step is the
                      trainer's (raftdvc_jax.train.step: sequence loss, clip, AdamW), sharded over the devices.
  tiled 512^3         s4 end to end over a --big^3 synthetic pair with tiled.run_tiled (--tile, --overlap,
                      --tile_batch), compile included and reported apart.
  corr memory         one s2 forward on a --corr_tile^3 tile: XLA's temporary-buffer estimate of all-pairs
                      (compiled, not run: at 128^3 its level 0 alone is 275 GB) and of local, and the device's
                      measured peak for local.
Random weights (the speed does not depend on them); inputs are synthetic bead pairs.
"""

from __future__ import annotations

import time

from absl import flags

from raftdvc_jax import benchmark

FLAGS = flags.FLAGS
flags.DEFINE_boolean('quick', False, 'Tiny sizes, narrow models, 2 iterations: checks the code paths on a CPU.')
flags.DEFINE_list('arms', ['s2', 's4', 's8'], 'Presets for the forward/train rows.')
flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Convolution dtypes for the forward/train rows.')
flags.DEFINE_integer('batch', 4, 'Pairs per forward/train call.')
flags.DEFINE_integer('repeats', 3, 'Timed calls per row after the compiling one.')
flags.DEFINE_integer('big', 512, 'Side of the tiled end-to-end volume.')
flags.DEFINE_integer('tile', 128, 'Tile side of the tiled run.')
flags.DEFINE_float('overlap', 0.25, 'Tile overlap of the tiled run.')
flags.DEFINE_integer('tile_batch', 2, 'Tiles per batch in the tiled run.')
flags.DEFINE_integer('corr_tile', 128, 'Tile side of the s2 local vs all-pairs memory row.')
flags.DEFINE_list('skip', [], 'Row groups to skip: model, tiled, corr.')

TRAINING_SIZE = {'s2': 32, 's4': 64, 's8': 128}


def _config(arm: str):
  """The preset, or under --quick a narrow 2-iteration version of it."""
  from raftdvc_jax.model.config import preset  # pylint: disable=import-outside-toplevel
  cfg = preset(arm)
  if FLAGS.quick:
    cfg = cfg.replace(feature_dim=16, hidden_dim=16, context_dim=16, corr_radius=2, iters=2)
  return cfg


def _sizes():
  """(training sizes per arm, big volume side, tile, corr tile) for this mode."""
  if FLAGS.quick:
    return {'s2': 16, 's4': 16, 's8': 32}, 48, 32, 32
  return TRAINING_SIZE, FLAGS.big, FLAGS.tile, FLAGS.corr_tile


def _pairs(batch: int, size: int, seed: int = 0):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  cfg = synthetic.preset('r2_32', size=size, disp_min=1.0, disp_max=3.0)
  pairs = [synthetic.make_pair(cfg, seed + i) for i in range(batch)]
  return {k: np.stack([p[s] for p in pairs]).astype(np.float32) for k, s in
          (('vol0', 'I1'), ('vol1', 'I2'), ('flow', 'flow'))}


def model_rows(arm: str, dtype_name: str) -> list[tuple]:
  """Forward and train-step rows of one arm and dtype."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from raftdvc_jax.model.raft import RAFTDVC
  from raftdvc_jax.train import schedule, state as state_lib, step as step_lib
  cfg = _config(arm)
  size = _sizes()[0][arm]
  dtype = jnp.bfloat16 if dtype_name == 'bfloat16' else None
  model = RAFTDVC(cfg, dtype=dtype)
  mesh = step_lib.make_mesh()
  batch = -(-FLAGS.batch // mesh.size) * mesh.size
  host = _pairs(batch, size)
  sched = schedule.onecycle(75_000, 2e-4, 0.2, 'cos')
  tx = state_lib.optimizer(sched, 5e-5, 1.0)
  state = jax.device_put(state_lib.create(cfg, tx, 0), step_lib.replicated(mesh))
  data = step_lib.to_device({k: v[None] for k, v in host.items()}, step_lib.batch_sharding(mesh))
  vols = step_lib.to_device({k: host[k] for k in ('vol0', 'vol1')}, step_lib.batch_sharding(mesh, False))
  forward = jax.jit(lambda v, a, b: model.apply(v, a, b).flow)
  fwd = benchmark.first_and_median(lambda: jax.block_until_ready(forward(state.variables, vols['vol0'], vols['vol1'])), FLAGS.repeats)
  step = step_lib.jit_train_step(step_lib.make_train_step(model, tx, sched, {'gamma': 0.8}), mesh)
  holder = [state]

  def one():
    holder[0], metrics = step(holder[0], data)
    jax.block_until_ready(metrics['loss'])

  train = benchmark.first_and_median(one, FLAGS.repeats)
  what = f'{arm} {size}^3 x{batch} {dtype_name}'
  return [(f'forward {what}', fwd[1], batch / fwd[1], 'pairs/s', f'first call {fwd[0]:.1f} s'),
          (f'train step {what}', train[1], batch / train[1], 'pairs/s', f'first call {train[0]:.1f} s')]


def tiled_row() -> tuple:
  """s4 end to end over a big synthetic pair with the tiled runner."""
  # pylint: disable=import-outside-toplevel
  import jax
  from raftdvc_jax.infer import tiled
  from raftdvc_jax.model.raft import RAFTDVC, init_params
  _, big, tile, _ = _sizes()
  cfg = _config('s4')
  pair = _pairs(1, big)
  variables = init_params(cfg, jax.random.key(0))
  apply_fn = tiled.model_apply_fn(RAFTDVC(cfg))
  _, summary = tiled.run_tiled(apply_fn, pair['vol0'][0], pair['vol1'][0], tile=tile, overlap=FLAGS.overlap,
                               batch=FLAGS.tile_batch, params=variables, min_size=cfg.min_size, progress=False,
                               return_summary=True)
  return (f'tiled s4 {big}^3 (tile {tile}, overlap {FLAGS.overlap}, {summary["tiles"]} tiles)', summary['seconds'],
          summary['voxels_per_second'], 'voxels/s', f'compile {summary["compile_seconds"]:.1f} s')


def corr_rows() -> list[tuple]:
  """s2 on one tile: XLA's memory estimate for all-pairs and local, and local's measured device peak."""
  # pylint: disable=import-outside-toplevel
  import jax
  from raftdvc_jax.model.raft import RAFTDVC, init_params
  _, _, _, side = _sizes()
  cfg = _config('s2')
  pair = _pairs(1, side)
  variables = init_params(cfg, jax.random.key(0))
  rows = []
  for method in ('allpairs', 'local'):
    model = RAFTDVC(cfg, correlation=method)
    fwd = jax.jit(lambda v, a, b, m=model: m.apply(v, a, b).flow)
    compiled = fwd.lower(variables, pair['vol0'], pair['vol1']).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**30
    note, seconds = 'compiled only', float('nan')
    if method == 'local':
      device = jax.local_devices()[0]
      seconds = benchmark.first_and_median(lambda: jax.block_until_ready(compiled(variables, pair['vol0'], pair['vol1'])), 1)[1]
      stats = device.memory_stats() or {}
      note = (f'device peak {stats["peak_bytes_in_use"] / 2**30:.2f} GiB' if 'peak_bytes_in_use' in stats
              else 'no device memory stats on this backend')
    rows.append((f'corr s2 {side}^3 {method}: XLA temp {temp:.2f} GiB', seconds, side**3 / seconds, 'voxels/s',
                 note))
  return rows


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  rows = []
  if 'model' not in FLAGS.skip:
    for arm in FLAGS.arms:
      for dtype in FLAGS.dtypes:
        rows += model_rows(arm, dtype)
  if 'tiled' not in FLAGS.skip:
    rows.append(tiled_row())
  if 'corr' not in FLAGS.skip:
    rows += corr_rows()
  print(f'{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}'
        f'{" (--quick: tiny sizes, narrow models)" if FLAGS.quick else ""}, total {time.perf_counter() - t0:.0f} s')
  print('| check | seconds | rate | note |\n|---|---|---|---|')
  for name, seconds, rate, unit, note in rows:
    print(f'| {name} | {seconds:.3f} | {rate:.3g} {unit} | {note} |', flush=True)


if __name__ == '__main__':
  from raftdvc_jax import cli  # pylint: disable=g-import-not-at-top
  cli.start(main)  # --help exits 0
