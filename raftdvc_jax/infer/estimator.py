"""Flow estimation with a fixed set of weights: whole volume or tiled, on one compiled path per tile shape."""

from __future__ import annotations

import collections
import functools
import logging
import math
import threading
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from raftdvc_jax.infer import memory
from raftdvc_jax.infer import tiled as tiled_runner
from raftdvc_jax.infer import tiling
from raftdvc_jax.model.config import ModelConfig
from raftdvc_jax.model.corr import CORRELATIONS, LOOKUP_CHOICES
from raftdvc_jax.model.raft import RAFTDVC

log = logging.getLogger(__name__)

# (config, tile shape, iters) -> how many times the network was traced for it; 1 once compiled.
TRACES: collections.Counter = collections.Counter()


@functools.lru_cache(maxsize=16)
def _tile_fn(config: ModelConfig, correlation: str, lookup: str, dtype, iters: int) -> Callable:
  """The tile function (variables, vol0, vol1[, flow_init]) -> (B, t0, t1, t2, 3) of one network.

  Cached so that every estimator with this network shares one function object: the runner's compiled
  programs are keyed by it, so a fresh object per call would compile again.
  """
  apply = tiled_runner.model_apply_fn(RAFTDVC(config, correlation=correlation, lookup=lookup, dtype=dtype), iters)

  def counted(variables, vol0, vol1, flow_init=None):
    TRACES[config, tuple(vol0.shape[1:]), iters] += 1  # runs at trace time only
    return apply(variables, vol0, vol1, flow_init)

  return counted


def _as_volume(v: Any, name: str) -> np.ndarray:
  a = np.asarray(v)
  if a.ndim != 3:
    raise ValueError(f'{name} must be a 3-D volume (X0, X1, X2), got shape {a.shape}')
  if a.dtype.kind not in 'biuf':
    raise ValueError(f'{name} must hold numbers, got dtype {a.dtype}')
  return a.astype(np.float32, copy=False)


def _array_like(v: Any):
  """v itself when it has a shape and dtype (an array, memmap or lazy reader), else np.asarray(v)."""
  return v if hasattr(v, 'shape') and hasattr(v, 'dtype') else np.asarray(v)


def balanced_batch(cap: int, tiles: int, devices: int = 1) -> int:
  """The smallest batch (a multiple of devices, <= cap) that needs as few batches as cap does.

  The runner pads the last batch with repeats, so 100 tiles in batches of 64 would compute 28 wasted tiles;
  two batches of 50 compute none.
  """
  cap = max(int(cap), devices)
  if tiles <= 0:
    return devices
  batches = math.ceil(tiles / cap)
  return min(cap, -(-math.ceil(tiles / batches) // devices) * devices)


class FlowEstimator:
  """Estimates the displacement field between two volumes with one network and its weights.

  `estimator(vol0, vol1)` returns float32 (3, X0, X1, X2): channel c is the displacement along array axis c,
  from the reference vol0 to the deformed vol1 (vol1(x + u(x)) ~ vol0(x)). `estimator.tiled(...)` covers a
  large volume with blended tiles; the whole volume is its one-tile case. The network is compiled once per
  (tile shape, batch, iterations) and reused; the weights stay on the devices between calls.
  """

  def __init__(self, config: ModelConfig, variables: Mapping, correlation: str = 'auto', dtype=None,
               provenance: Optional[Mapping[str, Any]] = None, lookup: str = 'auto'):
    if not isinstance(config, ModelConfig):
      raise TypeError(f'config must be a ModelConfig, got {type(config).__name__}')
    if 'params' not in variables:
      raise ValueError('variables must hold a "params" collection')
    self._config = config
    # iters is passed per call, so configs that differ only in their default share one compiled function.
    self._net_config = config.replace(iters=1)
    if correlation not in CORRELATIONS:
      raise ValueError(f'unknown correlation {correlation!r}; choose from {CORRELATIONS}')
    if lookup not in LOOKUP_CHOICES:
      raise ValueError(f'unknown lookup {lookup!r}; choose from {LOOKUP_CHOICES}')
    self._correlation, self._lookup = correlation, lookup
    self._dtype = dtype
    # Replicated over the local devices as the runner wants them, so no call copies the weights again.
    replicated = NamedSharding(tiled_runner.data_mesh(), PartitionSpec())
    self._variables = jax.device_put({k: v for k, v in variables.items() if k in ('params', 'batch_stats')},
                                     replicated)
    self.provenance = dict(provenance or {})
    self._lock = threading.Lock()

  @property
  def config(self) -> ModelConfig:
    return self._config

  @property
  def params(self):
    """The network parameters (Flax layout, on the device)."""
    return self._variables['params']

  @property
  def variables(self):
    """All variable collections ({'params'[, 'batch_stats']}) as the model's apply takes them."""
    return self._variables

  def _iters(self, iters) -> int:
    if iters is None:
      return self._config.iters
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1:
      raise ValueError(f'iters must be a positive integer, got {iters!r}')
    return int(iters)

  def _check_channels(self) -> None:
    if self._config.input_channels != 1:
      raise ValueError(f'this network takes {self._config.input_channels}-channel volumes; FlowEstimator runs '
                       'single-channel ones only')

  def check_inputs(self, vol0, vol1) -> tuple[np.ndarray, np.ndarray]:
    """float32 copies (or views) of a valid volume pair; ValueError naming the problem otherwise."""
    self._check_channels()
    a, b = _as_volume(vol0, 'vol0'), _as_volume(vol1, 'vol1')
    if a.shape != b.shape:
      raise ValueError(f'vol0 and vol1 differ in shape: {a.shape} vs {b.shape}')
    self._config.check_size(a.shape)
    for name, v in (('vol0', a), ('vol1', b)):
      if not np.isfinite(v).all():
        raise ValueError(f'{name} holds non-finite values (NaN or inf)')
    return a, b

  def traces(self, shape, iters: Optional[int] = None) -> int:
    """How often the network was traced for this tile (or whole-volume) shape and iteration count."""
    return TRACES[self._net_config, tuple(shape), self._iters(iters)]

  def plan(self, shape: Sequence[int], tile=0, overlap: float = 0.5, mask=None,
           batch: Optional[int] = None) -> tuple[tiling.TilePlan, int]:
    """The tile plan of a volume and the batch it will run in; raises before any work if either cannot run.

    Without a batch, picks the largest that fits the device (one tile per device on CPUs, where batching
    measured no gain), spread evenly over the batches; a tile that does not fit even alone raises
    memory.TileTooLargeError naming a tile size that would.
    """
    plan, _, batch = self._plan(shape, tile, overlap, mask, batch)
    return plan, batch

  def _plan(self, shape, tile, overlap, mask, batch):
    """(plan, the origins the mask selects or None without one, batch): plan()'s work, selecting once."""
    plan = tiling.plan_tiles(shape, tile, overlap, self._config.min_size)
    selected = None if mask is None else plan.select(mask)
    if batch is not None:
      if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f'batch must be a positive integer, got {batch!r}')
      return plan, selected, int(batch)
    devices = jax.local_device_count()
    cpu = jax.local_devices()[0].platform == 'cpu'
    cap = memory.pick_batch(self._config, plan.tile, devices=devices, max_per_device=1 if cpu else 64,
                            correlation=self._correlation)
    tiles = plan.num_tiles if selected is None else len(selected)
    return plan, selected, balanced_batch(cap, tiles, devices)

  def recommended_tiling(self) -> tuple[int, float] | None:
    """(tile, overlap) the weights were made for (their provenance's 'inference'), or None: whole volumes."""
    rec = self.provenance.get('inference') or {}
    return (int(rec['tile']), float(rec.get('overlap', 0.5))) if rec.get('tile') else None

  def tiling(self, tile=None, overlap: float | None = None):
    """(tile, overlap) to run with: `tile` as given, else the recommended one, else 0 (whole volumes); `overlap`
    as given, else the recommended one when the tile is, else None (the caller's default)."""
    rec = self.recommended_tiling()
    if tile is not None or rec is None:
      return (0 if tile is None else tile), overlap
    return rec[0], rec[1] if overlap is None else overlap

  def correlation_for(self, tile: Sequence[int], batch: int = 1) -> str:
    """The correlation a batch of tiles runs with: 'auto' is 'allpairs' when it fits the device, else 'local'."""
    per_device = max(1, -(-int(batch) // jax.local_device_count()))
    method = memory.choose_correlation(self._config, tile, per_device, correlation=self._correlation)
    if method == 'local' and self._correlation == 'auto':
      need = memory.tile_memory(self._config, tile, per_device, 'allpairs').total
      log.info('all-pairs correlation would need ~%.1f GiB for %d tile(s) of %s; using the memory-light local '
               'correlation (same result)', need / 2**30, per_device, 'x'.join(map(str, tile)))
    return method

  def tiled(self, vol0, vol1, tile=64, overlap: float = 0.5, blend: str = 'gaussian',
            batch: Optional[int] = None, iters: Optional[int] = None, mask=None,
            flow_init_fn: Optional[Callable] = None, progress: bool = False, return_summary: bool = False,
            memmap: Optional[bool] = None, across_processes: bool = False):
    """Flow (3, X0, X1, X2) float32 from vol0 to vol1 over blended tiles of one shape.

    tile is N, (X, Y, Z) or 'X,Y,Z' (0 = whole axis; a tile at least the volume's size is one whole-volume
    pass). vol0/vol1 may be memory maps or lazy readers: only the tiles are read. batch=None picks the
    largest batch that fits the device (see plan). mask skips tiles without a mask voxel and zeroes the
    flow outside it. flow_init_fn(origin, tile) -> (h0, h1, h2, 3) starts each tile from a given flow in
    feature voxels (coarse_to_fine.flow_init_fn). return_summary adds the runner's summary dict.
    across_processes splits the tiles over the processes of a jax.distributed job (every process calls it
    alike; process 0 gets the flow, the others None; infer/distributed.py).
    """
    iters = self._iters(iters)
    self._check_channels()
    vol0, vol1 = _array_like(vol0), _array_like(vol1)
    mask = None if mask is None else _array_like(mask)
    shape = tiled_runner.validate_pair(vol0, vol1, mask)
    if blend not in tiling.BLENDS:  # before the memory plan, which would not look at it
      raise ValueError(f'blend {blend!r} is not one of {", ".join(tiling.BLENDS)}')
    plan, selected, batch = self._plan(shape, tile, overlap, mask, batch)
    fn = _tile_fn(self._net_config, self.correlation_for(plan.tile, batch), self._lookup, self._dtype, iters)
    with self._lock:  # one run at a time: the runner owns the devices while it streams tiles
      return tiled_runner.run_tiled(fn, vol0, vol1, tile, overlap, blend, batch, mask, flow_init_fn, progress,
                                    params=self._variables, min_size=self._config.min_size,
                                    init_stride=self._config.stride, memmap=memmap,
                                    return_summary=return_summary, across_processes=across_processes,
                                    selected=selected)

  def __call__(self, vol0, vol1, iters: Optional[int] = None) -> np.ndarray:
    """Flow (3, X0, X1, X2) float32 from vol0 to vol1, whole volume in one pass (tiled's one-tile case)."""
    iters = self._iters(iters)
    a, b = self.check_inputs(vol0, vol1)
    return self.tiled(a, b, tile=0, batch=1, iters=iters)

  def __repr__(self) -> str:
    c = self._config
    return (f'FlowEstimator(encoder_type={c.encoder_type!r}, stride={c.stride}, corr_levels={c.corr_levels}, '
            f'corr_radius={c.corr_radius}, sampler={c.sampler!r}, volraft={c.volraft}, iters={c.iters})')


def load(path, fmt: str = 'auto', volraft_config: Optional[str] = None, encoder_type: Optional[str] = None,
         sampler: Optional[str] = None, correlation: str = 'auto', dtype=None, which: str = 'best',
         lookup: str = 'auto') -> FlowEstimator:
  """A FlowEstimator from shipped weights ('s4-starter'), a converted directory, a training run or a .pth/.pt.

  convert.resolve says what the path is: a training run loads its `which` step ('best' by validation EPE,
  or 'latest'), or the newest step that loads when that one is damaged, and logs which. A file is read
  without executing any code in it and converted in memory (fmt, volraft_config, encoder_type and sampler
  as in raftdvc-convert). Raises ValueError/OSError with one line naming the file.
  """
  from raftdvc_jax.convert.resolve import resolve  # pylint: disable=import-outside-toplevel
  found = resolve(path, which, fmt, volraft_config, encoder_type, sampler)
  return FlowEstimator(found.config, found.variables, correlation=correlation, dtype=dtype,
                       provenance=found.provenance, lookup=lookup)
