"""The tiled runner: batches of fixed-shape tiles through one compiled, device-sharded function, blended on the host.

run_tiled(apply_fn, vol0, vol1, tile=64) covers the volume with a TilePlan, compiles apply_fn once for the tile
and batch shape (AOT, cached across calls), pads the last batch to the same shape, shards each batch over the
local devices on a 'data' mesh axis, and overlaps the host's work with the device's: a background thread cuts
and stacks the next batch while the device computes, and the previous batch's result is blended into the
Stitcher while the current one runs.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from raftdvc_jax import batching
from raftdvc_jax import progress as progress_lib
from raftdvc_jax.infer import tiling

# Compiled executables by (function, shapes, devices); bounded so that a long session does not grow forever.
_COMPILED: collections.OrderedDict = collections.OrderedDict()
_COMPILED_MAX = 8
# Across processes, the accumulators are summed this many bytes of rows per collective call: it bounds the
# gather's memory to about num_processes * REDUCE_BYTES on every process.
REDUCE_BYTES = 64 << 20


def model_apply_fn(model, iters: int | None = None) -> Callable:
  """The tile function of a RAFTDVC module: (variables, vol0, vol1[, flow_init]) -> flow (B, t0, t1, t2, 3).

  Pass the variables to run_tiled as `params`, so they are a device-resident argument, not a constant baked
  into the compiled program.
  """
  def apply(variables, vol0, vol1, flow_init=None):
    return model.apply(variables, vol0, vol1, iters=iters, flow_init=flow_init).flow
  return apply


def validate_pair(vol0, vol1, mask=None) -> tuple[int, int, int]:
  """Checks a volume pair (and mask) for rank 3, equal non-empty shapes; returns the shape."""
  for name, v in (('vol0', vol0), ('vol1', vol1)):
    shape = tuple(getattr(v, 'shape', ()))
    if len(shape) != 3:
      raise ValueError(f'{name}: expected a 3-D volume (X0, X1, X2), got shape {shape}')
    if min(shape) == 0:
      raise ValueError(f'{name}: is empty, shape {shape}')
    if np.dtype(v.dtype).kind not in 'biuf':
      raise ValueError(f'{name}: unsupported dtype {v.dtype}; volumes must be numeric')
  if tuple(vol0.shape) != tuple(vol1.shape):
    raise ValueError(f'vol1: shape {tuple(vol1.shape)} does not match vol0 {tuple(vol0.shape)}')
  if mask is not None and tuple(mask.shape) != tuple(vol0.shape):
    raise ValueError(f'mask: shape {tuple(mask.shape)} does not match the volumes {tuple(vol0.shape)}')
  return tuple(int(s) for s in vol0.shape)


def data_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A one-axis mesh named 'data' over the local devices."""
  return Mesh(np.asarray(devices or jax.local_devices()), ('data',))


def compile_tile_fn(apply_fn: Callable, batch: int, tile: Sequence[int], init_grid: Sequence[int] | None,
                    mesh: Mesh, params=None):
  """AOT-compiles apply_fn for one batch and tile shape, inputs sharded on 'data'; cached across calls."""
  shard = NamedSharding(mesh, PartitionSpec('data'))
  key = (apply_fn, batch, tuple(tile), None if init_grid is None else tuple(init_grid),
         tuple(d.id for d in mesh.devices.flat),
         None if params is None else jax.tree.structure(params),
         None if params is None else tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(params)))
  if key in _COMPILED:
    _COMPILED.move_to_end(key)
    return _COMPILED[key]
  vol = jax.ShapeDtypeStruct((batch, *tile), jnp.float32, sharding=shard)
  args = [vol, vol]
  if init_grid is not None:
    args.append(jax.ShapeDtypeStruct((batch, *init_grid, 3), jnp.float32, sharding=shard))
  if params is not None:
    replicated = NamedSharding(mesh, PartitionSpec())
    args.insert(0, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), params))
  jitted = apply_fn if hasattr(apply_fn, 'lower') else jax.jit(apply_fn)
  compiled = jitted.lower(*args).compile()
  _COMPILED[key] = compiled
  while len(_COMPILED) > _COMPILED_MAX:
    _COMPILED.popitem(last=False)
  return compiled


def _batches_in_background(make_batch: Callable, chunks: list, depth: int = 2):
  """Yields make_batch(chunk) for each chunk, computed one or two ahead on a daemon thread."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()
  end = object()

  def work():
    try:
      for chunk in chunks:
        if stop.is_set():
          return
        q.put((chunk, make_batch(chunk)))
      q.put(end)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)  # re-raised in the consumer, so the caller sees the real error

  thread = threading.Thread(target=work, daemon=True, name='raftdvc-tile-reader')
  thread.start()
  try:
    while True:
      item = q.get()
      if item is end:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while thread.is_alive():  # unblock a producer waiting on a full queue
      try:
        q.get(timeout=0.05)
      except queue.Empty:
        pass


class _Work(NamedTuple):
  """What one run_tiled call computes: the plan, this process's tiles in batches, and where they run."""

  plan: tiling.TilePlan
  chunks: list          # [(origins padded to `batch`, number of real ones)], this process's share
  tiles: int            # this process's tiles
  tiles_total: int      # the tiles every process runs together (mask applied)
  batch: int
  mesh: Mesh
  index: int            # this process
  count: int            # processes


def _plan_work(shape, tile, overlap, min_size, mask, batch, devices, across_processes, selected) -> _Work:
  """Plans the tiles, keeps those the mask needs, takes this process's share and sizes the batch."""
  plan = tiling.plan_tiles(shape, tile, overlap, min_size)
  origins = plan.select(mask) if selected is None else list(selected)
  index, count = (jax.process_index(), jax.process_count()) if across_processes else (0, 1)
  mine = share(origins, index, count)
  devices = list(devices or jax.local_devices())
  # Never pad beyond the tiles there are: a single tile then runs exactly the whole-volume forward.
  batch = min(int(batch), max(len(mine), 1))
  batch = -(-batch // len(devices)) * len(devices)
  return _Work(plan, list(batching.padded_chunks(mine, batch)), len(mine), len(origins), batch,
               data_mesh(devices), index, count)


def _batch_reader(vol0, vol1, work: _Work, init_grid, flow_init_fn, shard) -> Callable:
  """make_batch((origins, real)) -> device arrays [vol0, vol1[, flow_init]] of one batch (the reader thread's)."""
  plan = work.plan

  def make_batch(item):
    chunk, real = item
    arrays = [np.stack([vol[plan.slices(o)] for o in chunk]).astype(np.float32, copy=False)
              for vol in (vol0, vol1)]
    if init_grid is not None:
      arrays.append(np.stack([flow_init_fn(o, plan.tile) for o in chunk]).astype(np.float32, copy=False))
    for name, t in zip(('vol0', 'vol1', 'flow_init'), arrays):
      finite = np.isfinite(t[:real]).reshape(real, -1).all(1)
      if not finite.all():
        where = chunk[int(np.argmin(finite))]
        raise ValueError(f'{name}: holds non-finite values (NaN or inf) in the tile at {where}')
    return [jax.device_put(a, shard) for a in arrays]

  return make_batch


def _run_and_blend(compiled, params, work: _Work, make_batch, stitcher, weights, progress: bool) -> None:
  """Runs every batch (read one or two ahead, dispatched asynchronously) and blends each into the stitcher."""
  bar = progress_lib.bar(work.tiles, 'tiles', progress, unit='tile')

  def blend_in(item, flows):
    chunk, real = item
    for origin, f in zip(chunk[:real], np.asarray(flows)[:real]):  # np.asarray waits for the device
      stitcher.add(origin, f, weights)
    bar.update(real)

  pending = None
  try:
    for item, arrays in _batches_in_background(make_batch, work.chunks):
      out = compiled(params, *arrays) if params is not None else compiled(*arrays)
      if pending is not None:
        blend_in(*pending)
      pending = (item, out)
    if pending is not None:
      blend_in(*pending)
  finally:
    bar.close()


def _reduce_over_processes(stitcher, shape, work: _Work) -> None:
  """Sums the blend accumulators over the processes onto process 0, in blocks of rows of axis 0."""
  if work.count > 1:
    rows = max(1, REDUCE_BYTES // (4 * (stitcher.channels + 1) * math.prod(shape[1:])))
    for acc in (stitcher.flow.swapaxes(0, 1), stitcher.weight):
      _sum_over_processes(acc, work.index == 0, rows)


def run_tiled(apply_fn: Callable, vol0, vol1, tile=64, overlap: float = 0.5, blend: str = 'gaussian',
              batch: int = 1, mask=None, flow_init_fn: Callable | None = None, progress: bool = True, *,
              params=None, min_size: int = 1, init_stride: int | None = None, memmap: bool | None = None,
              devices: Sequence[Any] | None = None, return_summary: bool = False, across_processes: bool = False,
              selected: Sequence | None = None):
  """Estimates a flow (3, X0, X1, X2) float32 by running apply_fn over blended tiles.

  apply_fn(vol0, vol1[, flow_init]) -> (B, t0, t1, t2, 3) on batches (B, t0, t1, t2) (with `params`, it is
  called as apply_fn(params, vol0, vol1[, flow_init]) and params are replicated on every device). tile is N,
  (X, Y, Z) or 'X,Y,Z' (0 = whole axis), clipped to the volume; min_size is the smallest side the model takes.
  batch is rounded up to a multiple of the device count and clipped to the number of tiles. With a mask,
  tiles holding no mask voxel are skipped and the flow is 0 outside the mask (`selected`: the origins
  plan.select(mask) gives, when the caller has them already). flow_init_fn(origin, tile) -> (h0, h1, h2, 3)
  gives each tile a starting flow on its feature grid (h = ceil(t / init_stride)), e.g.
  coarse_to_fine.flow_init_fn. With return_summary, returns (flow, summary) where summary has voxels, tiles,
  tiles_skipped, batches, batch, devices, compile_seconds, seconds and voxels_per_second.

  across_processes: in a jax.distributed job every process calls this with the same arguments, runs a
  contiguous share of the tiles (C order: roughly a slab along axis 0) and reads only those; the blend sums
  are then added over the processes, and process 0 gets the flow (the others None). That is the one-process
  blend with its sums taken in another order: equal to float rounding.
  """
  t_start = time.perf_counter()
  shape = validate_pair(vol0, vol1, mask)
  if blend not in tiling.BLENDS:
    raise ValueError(f'blend {blend!r} is not one of {", ".join(tiling.BLENDS)}')
  if int(batch) < 1:
    raise ValueError(f'batch must be >= 1, got {batch}')
  if flow_init_fn is not None and not init_stride:
    raise ValueError('flow_init_fn needs init_stride (the model stride) to know the feature grid')
  work = _plan_work(shape, tile, overlap, min_size, mask, batch, devices, across_processes, selected)
  plan = work.plan
  # One tile: uniform weight 1, so w * f / w is f bit for bit.
  weights = tiling.blend_weights(plan.tile, 'uniform' if plan.num_tiles == 1 else blend, overlap)
  init_grid = None if flow_init_fn is None else tuple(-(-t // init_stride) for t in plan.tile)
  stitcher = tiling.Stitcher(shape, 3, memmap)

  t_compile = time.perf_counter()
  compiled = (compile_tile_fn(apply_fn, work.batch, plan.tile, init_grid, work.mesh, params)
              if work.tiles else None)
  compile_seconds = time.perf_counter() - t_compile
  if params is not None:
    params = jax.device_put(params, NamedSharding(work.mesh, PartitionSpec()))
  shard = NamedSharding(work.mesh, PartitionSpec('data'))
  make_batch = _batch_reader(vol0, vol1, work, init_grid, flow_init_fn, shard)
  _run_and_blend(compiled, params, work, make_batch, stitcher, weights, progress)
  _reduce_over_processes(stitcher, shape, work)
  flow = stitcher.result(mask) if work.index == 0 else None
  if not return_summary:
    return flow
  seconds = time.perf_counter() - t_start
  voxels = int(np.prod(shape))
  return flow, {
      'voxels': voxels, 'tiles': work.tiles, 'tiles_skipped': plan.num_tiles - work.tiles_total,
      'tiles_total': work.tiles_total, 'tile': plan.tile, 'batches': len(work.chunks), 'batch': work.batch,
      'devices': work.mesh.devices.size, 'process': work.index, 'processes': work.count,
      'compile_seconds': compile_seconds, 'seconds': seconds, 'voxels_per_second': voxels / max(seconds, 1e-9),
      'memmap': stitcher.memmapped,
  }


def share(items: Sequence, index: int, count: int) -> list:
  """The contiguous part `index` of `count` nearly equal parts of items (sizes differ by at most one)."""
  n = len(items)
  return list(items[index * n // count:(index + 1) * n // count])


def _sum_over_processes(acc: np.ndarray, lead: bool, rows: int) -> None:
  """Replaces acc on process 0 by its sum over all processes, `rows` rows of axis 0 per collective call."""
  for start in range(0, acc.shape[0], rows):
    block = np.ascontiguousarray(acc[start:start + rows])
    gathered = multihost_utils.process_allgather(block)  # (processes, rows, ...) on every process
    if lead:
      acc[start:start + rows] = np.asarray(gathered).sum(axis=0, dtype=np.float32)


def format_summary(summary: dict) -> str:
  """One line for the end of a run: voxels, tiles, seconds, voxels/s."""
  skipped = f' ({summary["tiles_skipped"]} skipped by the mask)' if summary.get('tiles_skipped') else ''
  processes = summary.get('processes', 1)
  split = f' (this process\'s share of {summary["tiles_total"]} over {processes})' if processes > 1 else ''
  tiles = f'{summary["tiles"]} tiles of {"x".join(map(str, summary["tile"]))}{split}{skipped}'
  return (f'{summary["voxels"]:,} voxels, {tiles} in {summary["batches"]} batches of {summary["batch"]} '
          f'on {summary["devices"]} device(s), '
          f'{summary["seconds"]:.1f} s (compile {summary["compile_seconds"]:.1f} s), '
          f'{summary["voxels_per_second"]:,.0f} voxels/s')
