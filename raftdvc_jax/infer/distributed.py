"""Tiled flow estimation split over the processes of a jax.distributed job (one per host or per GPU).

Each process takes a contiguous share of the tile plan (C order, so a share is roughly a slab along array
axis 0), reads only those tiles from the volumes (pass memory-mapped arrays, or anything that slices, and no
process loads the whole pair), runs them on its local devices and blends them into its own accumulators of
w * flow and w. The accumulators are then summed over the processes in blocks of rows (a cross-process
all-gather: Gloo on CPU, NCCL on GPU) and process 0 normalises them. That is the single-process blend,
sum(w f) / sum(w), with the sums taken in another order: the flow equals the one-process flow to float
rounding. Process 0 returns the flow; the others return None.

Start the processes with jax.distributed.initialize(coordinator_address, num_processes, process_id) (on
SLURM, Open MPI or TPU pods with no arguments) before anything else touches JAX; docs/distributed.md.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from raftdvc_jax.infer import tiled, tiling

log = logging.getLogger(__name__)

# Rows of the accumulators summed per collective call: bounds the gather's memory to about
# num_processes * REDUCE_BYTES on every process.
REDUCE_BYTES = 64 << 20


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """jax.distributed.initialize, with Gloo as the CPU backend's cross-process collectives."""
  # The CPU client only has cross-process collectives when an implementation is chosen before it starts
  # ('gloo' is built into jaxlib; 'mpi' needs an MPI library). GPUs use NCCL regardless.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def share(items: Sequence, index: int, count: int) -> list:
  """The contiguous part `index` of `count` nearly equal parts of items (sizes differ by at most one)."""
  n = len(items)
  return list(items[index * n // count:(index + 1) * n // count])


def _sum_over_processes(local: np.ndarray, lead: bool, rows: int) -> np.ndarray | None:
  """Sums an array over all processes, `rows` rows of axis 0 per collective call; the sum on process 0."""
  out = np.empty_like(local) if lead else None
  for start in range(0, local.shape[0], rows):
    block = np.ascontiguousarray(local[start:start + rows])
    gathered = multihost_utils.process_allgather(block)  # (processes, rows, ...) on every process
    if lead:
      out[start:start + rows] = np.asarray(gathered).sum(axis=0, dtype=np.float32)
  return out


def run_tiled_distributed(apply_fn: Callable, vol0, vol1, tile=64, overlap: float = 0.5, blend: str = 'gaussian',
                          batch: int = 1, mask=None, *, params=None, min_size: int = 1,
                          devices: Sequence[Any] | None = None) -> tuple[np.ndarray | None, dict]:
  """run_tiled over this process's share of the tiles, summed over all processes; the flow on process 0.

  Arguments as tiled.run_tiled (apply_fn, params, tile, overlap, blend, batch per process, mask, min_size).
  Returns (flow (3, X0, X1, X2) float32 on process 0 and None elsewhere, summary) where the summary counts
  this process's tiles and seconds. Every process must call it with the same arguments.
  """
  t_start = time.perf_counter()
  index, count = jax.process_index(), jax.process_count()
  shape = tiled.validate_pair(vol0, vol1, mask)
  if blend not in tiling.BLENDS:
    raise ValueError(f'blend {blend!r} is not one of {", ".join(tiling.BLENDS)}')
  plan = tiling.plan_tiles(shape, tile, overlap, min_size)
  all_origins = plan.select(mask)
  origins = share(all_origins, index, count)
  devices = list(devices or jax.local_devices())
  mesh = tiled.data_mesh(devices)
  n_dev = len(devices)
  batch = -(-min(int(batch), max(len(origins), 1)) // n_dev) * n_dev
  # As run_tiled: a plan of one tile blends with weight 1.
  weights = tiling.blend_weights(plan.tile, 'uniform' if plan.num_tiles == 1 else blend, overlap)
  stitcher = tiling.Stitcher(shape, 3)
  shard = NamedSharding(mesh, PartitionSpec('data'))
  compile_seconds = 0.0
  if origins:
    t_compile = time.perf_counter()
    compiled = tiled.compile_tile_fn(apply_fn, batch, plan.tile, None, mesh, params)
    compile_seconds = time.perf_counter() - t_compile
    if params is not None:
      params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    for chunk in tiling.iter_batches(origins, batch):
      tiles0 = np.empty((batch, *plan.tile), np.float32)
      tiles1 = np.empty((batch, *plan.tile), np.float32)
      for i, origin in enumerate(chunk):
        tiles0[i] = vol0[plan.slices(origin)]  # reads this tile only
        tiles1[i] = vol1[plan.slices(origin)]
      tiles0[len(chunk):], tiles1[len(chunk):] = tiles0[len(chunk) - 1], tiles1[len(chunk) - 1]
      for name, t in (('vol0', tiles0), ('vol1', tiles1)):
        if not np.isfinite(t[:len(chunk)]).all():
          raise ValueError(f'{name}: holds non-finite values (NaN or inf) in a tile of {chunk}')
      arrays = [jax.device_put(a, shard) for a in (tiles0, tiles1)]
      flows = np.asarray(compiled(params, *arrays) if params is not None else compiled(*arrays))
      for origin, f in zip(chunk, flows):
        stitcher.add(origin, f, weights)
  log.info('process %d of %d: %d of %d tiles', index, count, len(origins), len(all_origins))

  lead = index == 0
  if count > 1:
    rows = max(1, REDUCE_BYTES // (4 * 4 * math.prod(shape[1:])))
    flow_sum = _sum_over_processes(np.asarray(stitcher.flow).swapaxes(0, 1), lead, rows)  # rows along axis 0
    weight_sum = _sum_over_processes(np.asarray(stitcher.weight), lead, rows)
    if lead:
      stitcher.flow[...] = flow_sum.swapaxes(0, 1)
      stitcher.weight[...] = weight_sum
  flow = stitcher.result(mask) if lead else None
  summary = {'process': index, 'processes': count, 'tiles': len(origins), 'tiles_total': len(all_origins),
             'compile_seconds': compile_seconds, 'seconds': time.perf_counter() - t_start}
  return flow, summary
