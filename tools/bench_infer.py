r"""Measures tiled inference: voxels/s over a synthetic bead volume, and the memory estimate against XLA's.

  python tools/bench_infer.py --preset s4 --size 128 --tile 64 --overlap 0.5 --batches 1,3

Runs the arm with random weights (speed does not depend on them) over a bead pair of --size^3, tiled, for each
batch size: compile time, then one timed pass over all tiles (compiled already, so the time is steady-state
work: cutting tiles, device compute, blending). Prints a Markdown table for docs/performance.md, plus the
memory estimator's figure for one batch against XLA's buffer assignment of the same compiled program.
"""

from __future__ import annotations

import os
import platform
import time

from absl import app
from absl import flags
import jax

from raftdvc_jax.infer import demo
from raftdvc_jax.infer import memory
from raftdvc_jax.infer import tiled
from raftdvc_jax.infer import tiling
from raftdvc_jax.model.config import preset
from raftdvc_jax.model.raft import RAFTDVC, init_params

_PRESET = flags.DEFINE_string('preset', 's4', 'Model preset (s2, s4, s8, ...).')
_SIZE = flags.DEFINE_integer('size', 128, 'Volume side in voxels.', lower_bound=8)
_TILE = flags.DEFINE_integer('tile', 64, 'Tile side in voxels.', lower_bound=1)
_OVERLAP = flags.DEFINE_float('overlap', 0.5, 'Tile overlap fraction.')
_BLEND = flags.DEFINE_enum('blend', 'gaussian', list(tiling.BLENDS), 'Blend weights.')
_BATCHES = flags.DEFINE_list('batches', ['1'], 'Batch sizes to time.')
_ITERS = flags.DEFINE_integer('iters', None, 'Iterations (default: the preset\'s).', lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the bead pair and the weights.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cfg = preset(_PRESET.value)
  iters = _ITERS.value or cfg.iters
  pair = demo.make_pair(cfg.stride if cfg.stride in demo.PAIR_PRESETS else 4, size=_SIZE.value, seed=_SEED.value)
  vol0, vol1 = pair['I1'], pair['I2']
  model = RAFTDVC(cfg)
  variables = init_params(cfg, jax.random.key(_SEED.value))
  apply = tiled.model_apply_fn(model, iters)
  plan = tiling.plan_tiles(vol0.shape, _TILE.value, _OVERLAP.value, cfg.min_size)
  print(f'# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, '
        f'{jax.local_device_count()} x {jax.local_devices()[0].device_kind}; load average '
        f'{os.getloadavg()[0]:.1f}', flush=True)
  print(f'# {_PRESET.value} ({cfg.encoder_type}, {iters} iterations), volume {_SIZE.value}^3, tile {plan.tile}, '
        f'overlap {_OVERLAP.value}, {plan.num_tiles} tiles', flush=True)
  print('| batch | compile s | run s | s per tile | voxels/s | voxels/s incl. compile | CPU s per tile |')
  print('|---|---|---|---|---|---|---|')
  for b in (int(x) for x in _BATCHES.value):
    t0 = time.perf_counter()
    compiled = tiled.compile_tile_fn(apply, -(-min(b, plan.num_tiles) // jax.local_device_count())
                                     * jax.local_device_count(), plan.tile, None, tiled.data_mesh(), variables)
    compile_s = time.perf_counter() - t0
    cpu = time.process_time()
    _, s = tiled.run_tiled(apply, vol0, vol1, _TILE.value, _OVERLAP.value, _BLEND.value, b, params=variables,
                           min_size=cfg.min_size, return_summary=True)
    cpu = time.process_time() - cpu
    print(f'| {s["batch"]} | {compile_s:.1f} | {s["seconds"]:.1f} | {s["seconds"] / s["tiles"]:.2f} | '
          f'{s["voxels_per_second"]:,.0f} | {s["voxels"] / (s["seconds"] + compile_s):,.0f} | '
          f'{cpu / s["tiles"]:.2f} |', flush=True)
    stats = compiled.memory_analysis()
    actual = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
    est = memory.tile_memory(cfg, plan.tile, s['batch'])
    print(f'#   memory, batch {s["batch"]}: XLA {actual / 2**20:.0f} MiB, estimate {est.total / 2**20:.0f} MiB '
          f'(x{memory.SAFETY} safety; {est.total / memory.SAFETY / 2**20:.0f} MiB without)', flush=True)


if __name__ == '__main__':
  from raftdvc_jax import cli  # pylint: disable=g-import-not-at-top
  cli.start(main)  # --help exits 0
