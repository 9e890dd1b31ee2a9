"""The training task, separate from the architecture: RAFT's sequence loss and endpoint-error metrics.

Flows are channel-last (..., X0, X1, X2, 3), channel c = displacement along array axis c, in voxels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

COMPONENTS = ('sum', 'mean')


def endpoint_error(pred, gt):
  """Per-voxel Euclidean error |pred - gt|_2 over the last (component) axis."""
  return jnp.sqrt(jnp.sum(jnp.square(pred - gt), axis=-1))


def valid_mask(gt, mask=None, max_flow: float | None = None):
  """(..., X0, X1, X2) float mask: `mask` (>= 0.5 counts), and |gt|_2 < max_flow when given; None if neither."""
  valid = None
  if mask is not None:
    valid = (mask >= 0.5)
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
  err = jnp.abs(flows.astype(jnp.float32) - gt.astype(jnp.float32)[None])
  err = err.sum(-1) if components == 'sum' else err.mean(-1)
  if valid is not None:
    err = err * valid[None]
  per_iter = err.reshape(n, -1).mean(axis=1)
  weights = gamma ** jnp.arange(n - 1, -1, -1, dtype=jnp.float32)
  return jnp.sum(weights * per_iter)


def flow_metrics(pred, gt, valid=None) -> dict[str, jax.Array]:
  """Mean endpoint error of the final prediction (over valid voxels when a mask is given)."""
  epe = endpoint_error(pred.astype(jnp.float32), gt.astype(jnp.float32))
  if valid is None:
    return {'epe': epe.mean()}
  return {'epe': jnp.sum(epe * valid) / jnp.maximum(jnp.sum(valid), 1.0)}
