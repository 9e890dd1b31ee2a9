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
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


def run_tiled(apply_fn: Callable, vol0, vol1, tile=64, overlap: float = 0.5, blend: str = 'gaussian',
              batch: int = 1, mask=None, flow_init_fn: Callable | None = None, progress: bool = True, *,
              params=None, min_size: int = 1, init_stride: int | None = None, memmap: bool | None = None,
              devices: Sequence[Any] | None = None, return_summary: bool = False, across_processes: bool = False):
  """Estimates a flow (3, X0, X1, X2) float32 by running apply_fn over blended tiles.

  apply_fn(vol0, vol1[, flow_init]) -> (B, t0, t1, t2, 3) on batches (B, t0, t1, t2) (with `params`, it is
  called as apply_fn(params, vol0, vol1[, flow_init]) and params are replicated on every device). tile is N,
  (X, Y, Z) or 'X,Y,Z' (0 = whole axis), clipped to the volume; min_size is the smallest side the model takes.
  batch is rounded up to a multiple of the device count and clipped to the number of tiles. With a mask,
  tiles holding no mask voxel are skipped and the flow is 0 outside the mask. flow_init_fn(origin, tile) ->
  (h0, h1, h2, 3) gives each tile a starting flow on its feature grid (h = ceil(t / init_stride)), e.g.
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
  plan = tiling.plan_tiles(shape, tile, overlap, min_size)
  origins = plan.select(mask)
  tiles_total = len(origins)
  index, count = (jax.process_index(), jax.process_count()) if across_processes else (0, 1)
  origins = share(origins, index, count)
  devices = list(devices or jax.local_devices())
  mesh = data_mesh(devices)
  n_dev = len(devices)
  # Never pad beyond the tiles there are: a single tile then runs exactly the whole-volume forward.
  batch = min(int(batch), max(len(origins), 1))
  batch = -(-batch // n_dev) * n_dev
  # One tile: uniform weight 1, so w * f / w is f bit for bit.
  weights = tiling.blend_weights(plan.tile, 'uniform' if plan.num_tiles == 1 else blend, overlap)
  init_grid = None if flow_init_fn is None else tuple(-(-t // init_stride) for t in plan.tile)
  stitcher = tiling.Stitcher(shape, 3, memmap)

  t_compile = time.perf_counter()
  compiled = compile_tile_fn(apply_fn, batch, plan.tile, init_grid, mesh, params) if origins else None
  compile_seconds = time.perf_counter() - t_compile
  shard = NamedSharding(mesh, PartitionSpec('data'))
  if params is not None:
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

  def make_batch(chunk):
    """Cuts, checks and stacks one batch on the host (runs on the reader thread)."""
    tiles0 = np.empty((batch, *plan.tile), np.float32)
    tiles1 = np.empty((batch, *plan.tile), np.float32)
    inits = None if init_grid is None else np.empty((batch, *init_grid, 3), np.float32)
    for i, origin in enumerate(chunk):
      index = plan.slices(origin)
      tiles0[i] = vol0[index]
      tiles1[i] = vol1[index]
      if inits is not None:
        inits[i] = flow_init_fn(origin, plan.tile)
    # Pad a short last batch by repeating its last tile: valid input, one compiled shape, result discarded.
    for a in (tiles0, tiles1, inits):
      if a is not None:
        a[len(chunk):] = a[len(chunk) - 1]
    for name, t in (('vol0', tiles0), ('vol1', tiles1), ('flow_init', inits)):
      if t is not None:
        finite = np.isfinite(t[:len(chunk)]).reshape(len(chunk), -1).all(1)
        if not finite.all():
          where = chunk[int(np.argmin(finite))]
          raise ValueError(f'{name}: holds non-finite values (NaN or inf) in the tile at {where}')
    arrays = [tiles0, tiles1] + ([] if inits is None else [inits])
    return [jax.device_put(a, shard) for a in arrays]

  bar = progress_lib.bar(len(origins), 'tiles', progress, unit='tile')

  def blend_in(chunk, flows):
    flows = np.asarray(flows)  # waits for the device
    for origin, f in zip(chunk, flows):
      stitcher.add(origin, f, weights)
    bar.update(len(chunk))

  pending = None
  chunks = list(tiling.iter_batches(origins, batch))
  try:
    for chunk, arrays in _batches_in_background(make_batch, chunks):
      out = compiled(params, *arrays) if params is not None else compiled(*arrays)  # dispatched asynchronously
      if pending is not None:
        blend_in(*pending)
      pending = (chunk, out)
    if pending is not None:
      blend_in(*pending)
  finally:
    bar.close()
  lead = index == 0
  if count > 1:
    rows = max(1, REDUCE_BYTES // (4 * (stitcher.channels + 1) * math.prod(shape[1:])))
    for acc in (stitcher.flow.swapaxes(0, 1), stitcher.weight):  # rows along array axis 0
      _sum_over_processes(acc, lead, rows)
  flow = stitcher.result(mask) if lead else None
  seconds = time.perf_counter() - t_start
  if not return_summary:
    return flow
  voxels = int(np.prod(shape))
  summary = {
      'voxels': voxels, 'tiles': len(origins), 'tiles_skipped': plan.num_tiles - tiles_total,
      'tiles_total': tiles_total, 'tile': plan.tile, 'batches': len(chunks), 'batch': batch, 'devices': n_dev,
      'process': index, 'processes': count,
      'compile_seconds': compile_seconds, 'seconds': seconds, 'voxels_per_second': voxels / max(seconds, 1e-9),
      'memmap': stitcher.memmapped,
  }
  return flow, summary


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
