"""The training task, separate from the architecture: RAFT's sequence loss and endpoint-error metrics.

Flows are channel-last (..., X0, X1, X2, 3), channel c = displacement along array axis c, in voxels.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from raftdvc_jax.data import masks
from raftdvc_jax.model.corr import all_pairs
from raftdvc_jax.model.layers import at_least_float32, resize_trilinear
from raftdvc_jax.model.raft import coords_grid

COMPONENTS = ('sum', 'mean')


def endpoint_error(pred, gt):
  """Per-voxel Euclidean error |pred - gt|_2 over the last (component) axis."""
  return jnp.sqrt(jnp.sum(jnp.square(pred - gt), axis=-1))


def valid_mask(gt, mask=None, max_flow: float | None = None):
  """(..., X0, X1, X2) float mask: `mask` (>= 0.5 counts), and |gt|_2 < max_flow when given; None if neither."""
  valid = None
  if mask is not None:
    valid = masks.inside(mask)
  if max_flow is not None and max_flow > 0:
    small = jnp.sqrt(jnp.sum(jnp.square(gt), axis=-1)) < max_flow
    valid = small if valid is None else valid & small
  return None if valid is None else valid.astype(jnp.float32)


def sequence_loss(flows, gt, gamma: float = 0.8, valid=None, components: str = 'sum'):
  """RAFT's sequence loss sum_i gamma^(N-1-i) mean_{B, voxels}(valid * L1(flows[i] - gt)).

  flows: (N, B, X0, X1, X2, 3) every iteration's prediction; gt: (B, X0, X1, X2, 3).
  components: 'sum' adds |error| over the three components (RAFT-DVC's SequenceLoss), 'mean' averages
  them (VolRAFT's sequence_loss). The mean runs over every voxel, masked ones included (both originals
  do this), so a mask lowers the loss rather than renormalising it. VolRAFT's batch-cross broadcast of
  its mask is a bug and is not reproduced.
  """
  if components not in COMPONENTS:
    raise ValueError(f'components must be one of {COMPONENTS}, got {components!r}')
  n = flows.shape[0]
  err = jnp.abs(at_least_float32(flows) - at_least_float32(gt)[None])
  err = err.sum(-1) if components == 'sum' else err.mean(-1)
  if valid is not None:
    err = err * valid[None]
  per_iter = err.reshape(n, -1).mean(axis=1)
  weights = gamma ** jnp.arange(n - 1, -1, -1, dtype=jnp.float32)
  return jnp.sum(weights * per_iter)


def flow_on_grid(gt, grid):
  """Full-resolution flow (B, X0, X1, X2, 3) -> the feature grid, in feature voxels (inverse of upsample_flow)."""
  scale = jnp.asarray([g / s for g, s in zip(grid, gt.shape[1:4])], jnp.float32)
  return resize_trilinear(gt.astype(jnp.float32), grid) * scale


def correlation_loss(fmap0, fmap1, gt):
  """Cross-entropy of each reference feature's match over all target features against the true match.

  The logits are the level-0 all-pairs correlation <f0(p), f1(q)> / sqrt(C); the target spreads over the 8
  grid neighbours of p + u(p) (u on the feature grid, in feature voxels) with trilinear weights, so
  sub-cell motion gives a graded target rather than rounding to zero. Reference voxels whose match falls
  outside the grid are left out. It gives the encoder a direct signal that the sequence loss only
  reaches through the update block, which makes features discriminative in hundreds rather than
  thousands of steps (docs/training.md).
  """
  b, *grid, c = fmap0.shape
  n = grid[0] * grid[1] * grid[2]
  logp = jax.nn.log_softmax(all_pairs(fmap0, fmap1).reshape(b, n, n), axis=-1)  # the level-0 correlation
  target = jax.lax.stop_gradient(coords_grid(b, grid) + flow_on_grid(gt, tuple(grid))).reshape(b, n, 3)
  hi = jnp.asarray(grid, jnp.float32) - 1.0
  inside = jnp.all((target >= 0.0) & (target <= hi), axis=-1)
  base = jnp.clip(jnp.floor(target), 0.0, jnp.maximum(hi - 1.0, 0.0))
  frac = jnp.clip(target - base, 0.0, 1.0)
  nll = jnp.zeros((b, n), jnp.float32)
  for corner in itertools.product((0, 1), repeat=3):
    idx = (base + jnp.asarray(corner, jnp.float32)).astype(jnp.int32)
    idx = jnp.minimum(idx, jnp.asarray(grid, jnp.int32) - 1)
    flat = (idx[..., 0] * grid[1] + idx[..., 1]) * grid[2] + idx[..., 2]
    weight = jnp.prod(jnp.where(jnp.asarray(corner, bool), frac, 1.0 - frac), axis=-1)
    nll = nll - weight * jnp.take_along_axis(logp, flat[..., None], axis=-1)[..., 0]
  inside = inside.astype(jnp.float32)
  return jnp.sum(nll * inside) / jnp.maximum(jnp.sum(inside), 1.0)


def flow_metrics(pred, gt, valid=None) -> dict[str, jax.Array]:
  """Mean endpoint error of the final prediction (over valid voxels when a mask is given)."""
  epe = endpoint_error(pred.astype(jnp.float32), gt.astype(jnp.float32))
  if valid is None:
    return {'epe': epe.mean()}
  return {'epe': jnp.sum(epe * valid) / jnp.maximum(jnp.sum(valid), 1.0)}
