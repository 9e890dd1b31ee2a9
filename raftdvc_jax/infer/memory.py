"""How much device memory one inference tile needs, and the largest batch of tiles that fits.

The estimate follows a forward pass through its three phases and takes the largest on top of what lives
throughout (weights, the input pair, the output flow): the encoders' widest activations; building the
all-pairs correlation (three level-0-sized buffers, the peak from ~16^3 feature grids on); and the
iterations (pyramid, feature/context maps and one iteration's update-block activations, since the scan keeps
only its carry between iterations at inference). Every tensor is counted as float32. The estimate was checked
against XLA's own memory analysis of the compiled forward (docs/performance.md, "Inference").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax

from raftdvc_jax import runtime
from raftdvc_jax.infer import tiling
from raftdvc_jax.model.config import ENCODERS, ModelConfig
from raftdvc_jax.model import corr_local
from raftdvc_jax.model.corr import pyramid_bytes

F32 = 4
# XLA's peak / the estimate is 0.80-0.99 on CPU (docs/performance.md); the margin is for GPU workspaces.
SAFETY = 1.2
# Encoder: the stem's 32 channels plus a bottleneck block's live tensors (input, 1x1, 3^3, 1x1, residual).
ENCODER_LIVE_CHANNELS = 3 * 32
# The convolutions' im2col slabs (model/layers.py: the 7^3 stem's 49 taps per plane, the 3^3 convs' 9 per
# plane, on top of their inputs): fitted to XLA's buffer assignment of the s8 and s4 forwards at 32-64^3
# tiles, where the encoder phase measured 5.2x the live channels above.
ENCODER_IM2COL_CHANNELS = 400
# Building the pyramid keeps three level-0-sized buffers alive (the matmul, its scaled copy and the reshaped
# pooling input): XLA's buffer assignment measured exactly 3.0 x level 0 at 16^3 and 24^3 feature grids.
CORR_BUILD_COPIES = 3
# Update block live channels per feature voxel besides the correlation features: motion encoder (96 + 64 + 32
# + 80 + 83), GRU concat input (243 x 2 for z/r and q) and gates (3 x 96), flow head (128), hidden/context.
UPDATE_LIVE_CHANNELS = 1300
# Fraction of the device's free memory a plan may use.
BUDGET_FRACTION = 0.9


class TileTooLargeError(ValueError):
  """One tile does not fit the device; the message says which tile size would."""


@dataclasses.dataclass(frozen=True)
class TileMemory:
  """Estimated bytes of one forward pass over a batch of tiles, by component and phase."""

  params: int       # the weights, resident once per device
  inputs: int       # the volume pair, the output flow and the final upsampling's intermediate
  encoders: int     # the encoders' widest live activations (phase 1)
  features: int     # feature maps of both volumes, hidden state and context (phases 2-3)
  correlation: int  # building the all-pairs pyramid (phase 2)
  pyramid: int      # the finished pyramid, alive through the iterations (phase 3)
  iteration: int    # one iteration's lookup and update-block activations (phase 3)

  @property
  def total(self) -> int:
    """The estimated peak, safety factor included: the largest phase on top of what lives throughout."""
    phases = (self.encoders, self.features + self.correlation, self.features + self.pyramid + self.iteration)
    return int(SAFETY * (self.params + self.inputs + max(phases)))


def feature_grid(tile: Sequence[int], stride: int) -> tuple[int, int, int]:
  """The flow grid of a tile, ceil(tile / stride) per axis."""
  return tuple(math.ceil(int(t) / stride) for t in tile)


def param_bytes(cfg: ModelConfig) -> int:
  """Bytes of the float32 weights (counted from the layer shapes, no initialisation)."""
  def encoder(out):
    n = 7**3 * cfg.input_channels * 32 + 32
    for planes, cin in zip((32, 64, 96), (32, 32, 64)):
      mid = planes // 4
      for j in range(2):
        c = cin if j == 0 else planes
        n += c * mid + mid + 27 * mid * mid + mid + mid * planes + planes
        if j == 0 and c != planes:
          n += c * planes + planes
    return n + 96 * out + out
  h, x = cfg.hidden_dim, cfg.context_dim + 80 + 3
  gru = 3 * ((h + x) * h * (5 if cfg.gru == 'sep' else 27) + h) * (3 if cfg.gru == 'sep' else 1)
  update = (cfg.corr_channels * 96 + 96 + 7**3 * 3 * 64 + 64 + 27 * 64 * 32 + 32 + 27 * 128 * 80 + 80 + gru
            + 27 * h * 128 + 128 + 27 * 128 * 3 + 3)
  return F32 * (encoder(cfg.feature_dim) + encoder(cfg.hidden_dim + cfg.context_dim) + update)


def tile_memory(cfg: ModelConfig, tile: Sequence[int], batch: int = 1, correlation: str = 'allpairs') -> TileMemory:
  """Estimates the device bytes of one forward over `batch` tiles of shape `tile` with model `cfg`.

  correlation 'local' (model/corr_local.py) replaces the all-pairs build and pyramid by its pooled features
  and one query chunk's working set.
  """
  tile = tuple(int(t) for t in tile)
  voxels = math.prod(tile)
  grid = feature_grid(tile, cfg.stride)
  n = math.prod(grid)
  stem = ENCODERS[cfg.encoder_type].conv1_stride
  stem_voxels = math.prod(math.ceil(t / stem) for t in tile)
  k = (2 * cfg.corr_radius + 1) ** 3
  slab = min(2 * cfg.corr_radius + 2, max(grid)) ** 3  # the lookup's gathered block per query and level
  return TileMemory(
      params=param_bytes(cfg),
      inputs=F32 * batch * voxels * (2 + 3 + 3),
      # fnet sees both volumes, cnet the reference: three encoder passes of the same width.
      encoders=F32 * 3 * batch * stem_voxels * (ENCODER_LIVE_CHANNELS + ENCODER_IM2COL_CHANNELS),
      features=F32 * batch * n * (2 * cfg.feature_dim + cfg.hidden_dim + cfg.context_dim),
      correlation=0 if correlation == 'local' else CORR_BUILD_COPIES * F32 * batch * n * n,
      pyramid=(corr_local.local_bytes(grid, cfg.corr_levels, cfg.corr_radius, cfg.feature_dim, batch)
               if correlation == 'local' else pyramid_bytes(grid, cfg.corr_levels, batch)),
      iteration=F32 * batch * n * (cfg.corr_levels * (k + slab) + UPDATE_LIVE_CHANNELS))


def device_memory_bytes(device=None) -> int:
  """Free memory of a device (allocator limit minus use), or the host's available RAM for CPU devices."""
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None  # some backends do not implement it
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
  return runtime.available_ram_bytes()


def _gib(b: float) -> str:
  return f'{b / 2**30:.2f} GiB'


def default_budget() -> int:
  """Bytes a plan may use on each device: BUDGET_FRACTION of the first local device's free memory."""
  return int(BUDGET_FRACTION * device_memory_bytes())


def choose_correlation(cfg: ModelConfig, tile: Sequence[int], batch: int = 1, budget: int | None = None,
                       correlation: str = 'auto') -> str:
  """Resolves correlation 'auto': 'allpairs' (fastest) when a batch of tiles fits the budget with it, else 'local'.

  'allpairs' and 'local' are returned as given.
  """
  if correlation != 'auto':
    return correlation
  budget = default_budget() if budget is None else budget
  return 'allpairs' if tile_memory(cfg, tile, batch, 'allpairs').total <= budget else 'local'


def largest_cube_tile(cfg: ModelConfig, budget: int, upto: int = 1024, correlation: str = 'allpairs') -> int:
  """The largest cubic tile side (a multiple of the stride, >= cfg.min_size) whose batch of one fits budget."""
  best = 0
  side = cfg.stride * -(-cfg.min_size // cfg.stride)
  while side <= upto:
    cube = (side,) * 3
    if tile_memory(cfg, cube, 1, choose_correlation(cfg, cube, 1, budget, correlation)).total <= budget:
      best = side
    side += cfg.stride
  return best


def pick_batch(cfg: ModelConfig, tile: Sequence[int], budget: int | None = None, devices: int = 1,
               max_per_device: int = 64, correlation: str = 'allpairs') -> int:
  """The largest total batch (a multiple of `devices`) whose per-device share fits the budget.

  budget is bytes per device (default_budget()); the share is capped at max_per_device, beyond which larger
  batches stop paying on any device. correlation 'auto' plans all-pairs batches while one tile fits with it,
  else 'local' ones (choose_correlation then gives the method for the batch). Raises TileTooLargeError,
  naming a tile size that would fit, when even one tile per device does not.
  """
  tile = tuple(int(t) for t in tile)
  budget = default_budget() if budget is None else budget
  method = choose_correlation(cfg, tile, 1, budget, correlation)
  one = tile_memory(cfg, tile, 1, method)
  if one.total > budget:
    side = largest_cube_tile(cfg, budget, correlation=correlation)
    hint = (f'use --tile {side} or smaller' if side else
            f'no tile of at least {cfg.min_size} voxels fits; free device memory or use a coarser arm')
    if method == 'allpairs' and tile_memory(cfg, tile, 1, 'local').total <= budget:
      hint = 'use --correlation local (or auto), or a smaller --tile'
    held = f'all-pairs correlation {_gib(one.correlation)}' if method == 'allpairs' else 'local correlation'
    raise TileTooLargeError(
        f'a {"x".join(map(str, tile))} tile needs ~{_gib(one.total)} with the {cfg.encoder_type} encoder '
        f'({held}) but the device has {_gib(budget)} to spare; {hint}')
  per_device = 1
  while per_device < max_per_device and tile_memory(cfg, tile, per_device + 1, method).total <= budget:
    per_device += 1
  return per_device * devices


def auto_batch(cfg: ModelConfig, shape: Sequence[int], tile, budget: int | None = None,
               devices: int | None = None, correlation: str = 'allpairs') -> int:
  """pick_batch for the tile a volume of `shape` actually gets (tile parsed and clipped as plan_tiles does)."""
  requested = tiling.parse_tile(tile)
  clipped = tuple(n if t == 0 else min(t, n) for t, n in zip(requested, shape))
  return pick_batch(cfg, clipped, budget, devices or jax.local_device_count(), correlation=correlation)
