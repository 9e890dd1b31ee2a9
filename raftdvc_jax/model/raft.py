"""The RAFT-DVC / VolRAFT network: normalise, encode, correlate, iterate the update block, upsample."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from raftdvc_jax.model.config import ModelConfig
from raftdvc_jax.model import corr as corr_lib
from raftdvc_jax.model.encoder import ContextEncoder, Encoder
from raftdvc_jax.model.layers import Dtype, at_least_float32, resize_trilinear
from raftdvc_jax.model.update import UpdateBlock


class RAFTOutput(NamedTuple):
  """Model outputs, channel-last; channel c of a flow is the displacement along array axis c, in voxels."""

  flow: jax.Array                        # (B, X0, X1, X2, 3) final flow at input resolution
  flow_low: jax.Array                    # (B, h, w, d, 3) final flow on the feature grid, feature voxels
  uncertainty: Optional[jax.Array] = None  # (B, X0, X1, X2, 3|4) final uncertainty map, if configured
  flows: Optional[jax.Array] = None      # (iters, B, X0, X1, X2, 3) every iteration's flow (train=True)
  uncertainties: Optional[jax.Array] = None  # (iters, B, X0, X1, X2, 3|4) (train=True, if configured)
  fmaps: Optional[tuple] = None          # (fmap0, fmap1), each (B, h, w, d, C) level-0 features (train=True)


def normalize_pair(vol0, vol1):
  """Joint min-max normalisation of a pair to [0, 1] per sample and channel (denominator 1 if flat)."""
  axes = (1, 2, 3)
  lo = jnp.minimum(vol0.min(axes, keepdims=True), vol1.min(axes, keepdims=True))
  hi = jnp.maximum(vol0.max(axes, keepdims=True), vol1.max(axes, keepdims=True))
  den = jnp.where(hi - lo > 0, hi - lo, 1.0)
  return (vol0 - lo) / den, (vol1 - lo) / den


def coords_grid(batch: int, shape, dtype=jnp.float32) -> jax.Array:
  """(B, X0, X1, X2, 3) grid whose channel c is the index along array axis c."""
  grid = jnp.stack(jnp.meshgrid(*(jnp.arange(n, dtype=dtype) for n in shape), indexing='ij'), -1)
  return jnp.broadcast_to(grid, (batch, *shape, 3))


def prepare_pair(vol0, vol1):
  """A pair (B, X0, X1, X2[, C]) -> float32 channel-last, jointly normalised (normalize_pair)."""
  if vol0.shape != vol1.shape:
    raise ValueError(f'volume shapes differ: {vol0.shape} vs {vol1.shape}')
  if vol0.ndim == 4:
    vol0, vol1 = vol0[..., None], vol1[..., None]
  return normalize_pair(at_least_float32(vol0), at_least_float32(vol1))


def feature_encoder(cfg: ModelConfig, train: bool = False, dtype: Dtype | None = None, **kwargs) -> Encoder:
  """The feature encoder ('fnet') of RAFTDVC(cfg); apply it alone with a model's params['fnet']."""
  return Encoder(cfg.feature_dim, cfg.encoder_type, cfg.encoder_norm, cfg.volraft, train, dtype, **kwargs)


def encode_pair(fnet, vol0, vol1):
  """(fmap0, fmap1): both prepared volumes through one feature encoder in a single batch, as RAFT does."""
  fmaps = fnet(jnp.concatenate([vol0, vol1], 0))
  return fmaps[:vol0.shape[0]], fmaps[vol0.shape[0]:]


def upsample_flow(flow, size, extra_scale: float = 1.0):
  """Trilinear align_corners resize of a (B, h, w, d, C) map to `size`, channel c < 3 scaled by size/h."""
  up = resize_trilinear(flow, size)
  scale = [extra_scale * size[c] / flow.shape[1 + c] for c in range(3)] + [1.0] * (flow.shape[-1] - 3)
  return up * jnp.asarray(scale, up.dtype)


class _Iteration(UpdateBlock):
  """One refinement step on the carry (net, coords1[, uncertainty]); scanned over the iterations.

  It subclasses UpdateBlock rather than wrapping it so that the parameters keep UpdateBlock's own paths
  (update_block/gru/..., not update_block/UpdateBlock_0/gru/...), the names PyTorch's state dicts map to.
  """

  out_size: tuple = ()
  extra_scale: float = 1.0
  emit_all: bool = False

  def __call__(self, carry, context, corr_fn, coords0):
    net, coords1, unc = carry
    coords1 = jax.lax.stop_gradient(coords1)  # RAFT: no gradient through the lookup coordinates
    net, delta, unc_low = super().__call__(net, context, corr_fn(coords1), coords1 - coords0)
    coords1 = coords1 + at_least_float32(delta)
    if unc_low is not None:
      unc = unc_low.astype(jnp.float32)
    ys = None
    if self.emit_all:
      ys = (upsample_flow(coords1 - coords0, self.out_size, self.extra_scale),
            None if unc is None else upsample_flow(unc, self.out_size))
    return (net, coords1, unc), ys


class RAFTDVC(nn.Module):
  """RAFT-DVC and VolRAFT as one Flax module; parameter paths mirror the PyTorch module paths.

  Call it on a pair of volumes (B, X0, X1, X2[, C]). `train=True` returns every iteration's flow (for the
  sequence loss) and updates batch-norm statistics; otherwise only the final flow is materialised.
  """

  config: ModelConfig
  correlation: str = 'allpairs'  # 'allpairs' pyramid or memory-light 'local' windows (corr.py), same numbers
  lookup: str = 'auto'        # formula reading the pyramid (corr.LOOKUPS); 'auto' picks the fastest exact one
  dtype: Dtype | None = None  # compute dtype of convolutions (e.g. bfloat16); correlation stays float32
  remat: bool = False         # recompute each iteration's activations in the backward pass

  @nn.compact
  def __call__(self, vol0, vol1, iters: int | None = None, flow_init=None, train: bool = False):
    cfg = self.config
    iters = iters or cfg.iters
    vol0, vol1 = prepare_pair(vol0, vol1)
    batch, *size = vol0.shape[:4]

    fmap0, fmap1 = encode_pair(feature_encoder(cfg, train, self.dtype, name='fnet'), vol0, vol1)
    grid = tuple(math.ceil(n / cfg.stride) for n in size)
    if fmap0.shape[1:4] != grid:
      raise ValueError(f'encoder {cfg.encoder_type!r} gives a {fmap0.shape[1:4]} grid for input {tuple(size)}'
                       f', not ceil(size / {cfg.stride}) = {grid}; use even sizes')
    corr_fn = corr_lib.build(fmap0, fmap1, cfg.corr_levels, cfg.corr_radius, cfg.sampler, self.correlation,
                             self.lookup)
    net, context = ContextEncoder(cfg.hidden_dim, cfg.context_dim, cfg.encoder_type, cfg.context_norm,
                                  cfg.volraft, train, self.dtype, name='cnet')(vol0)

    coords0 = coords_grid(batch, grid, vol0.dtype)  # float32 (float64 for a float64 model)
    coords1 = coords0 if flow_init is None else coords0 + at_least_float32(flow_init)
    unc = None
    if cfg.uncertainty != 'none':
      unc = jnp.zeros((batch, *grid, 3 if cfg.uncertainty == 'nll' else 4), jnp.float32)
    extra_scale = cfg.flow_scale  # VolRAFT's upflow8 multiplies by 8 on top of the size ratio

    step = nn.remat(_Iteration, prevent_cse=False) if self.remat else _Iteration
    scan = nn.scan(step, variable_broadcast='params', split_rngs={'params': False},
                   in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=iters)
    iterate = scan(hidden_dim=cfg.hidden_dim, gru_type=cfg.gru, uncertainty=cfg.uncertainty, dtype=self.dtype,
                   out_size=tuple(size), extra_scale=extra_scale, emit_all=train, name='update_block')
    (net, coords1, unc), ys = iterate((net, coords1, unc), context, corr_fn, coords0)
    flow_low = coords1 - coords0
    out = RAFTOutput(flow=upsample_flow(flow_low, size, extra_scale), flow_low=flow_low,
                     uncertainty=None if unc is None else upsample_flow(unc, size))
    if train:
      out = out._replace(flows=ys[0], uncertainties=ys[1], fmaps=(fmap0, fmap1))
    return out


# What jax_disable_most_optimizations sets, for one compilation only (no global flag is flipped): the
# initialisers run once, and optimising their random-bit kernels costs 14-37 s on a small CPU against 5-10 s.
UNOPTIMIZED = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def init_params(config: ModelConfig, rng, size=None, optimize: bool = True, **module_kwargs):
  """Initialises the variables of RAFTDVC(config) on a dummy pair of spatial `size` (default: minimal).

  optimize=False compiles the initialisers without XLA's optimisation passes (faster when they run once).
  """
  if size is None:
    size = (config.stride * 2 ** (config.corr_levels - 1) * 2,) * 3
  vol = jnp.zeros((1, *size, config.input_channels), jnp.float32)
  model = RAFTDVC(config, **module_kwargs)
  init = jax.jit(lambda r: model.init(r, vol, vol, iters=1))
  if optimize:
    return init(rng)
  return init.lower(rng).compile(compiler_options=UNOPTIMIZED)(rng)
