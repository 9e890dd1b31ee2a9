"""Sequence loss and endpoint-error metrics against hand computations."""

import numpy as np
import pytest

import jax.numpy as jnp

from raftdvc_jax import metrics
from raftdvc_jax.train import loss


def _hand_loss(flows, gt, gamma, valid=None, components='sum'):
  n = flows.shape[0]
  total = 0.0
  for i in range(n):
    err = np.abs(flows[i].astype(np.float64) - gt)
    err = err.sum(-1) if components == 'sum' else err.mean(-1)
    if valid is not None:
      err = err * valid
    total += gamma ** (n - 1 - i) * err.mean()
  return total


@pytest.fixture(name='case')
def _case():
  rng = np.random.default_rng(0)
  flows = rng.normal(size=(4, 2, 5, 6, 7, 3)).astype(np.float32)
  gt = rng.normal(size=(2, 5, 6, 7, 3)).astype(np.float32)
  return flows, gt


def test_sequence_loss_is_gamma_weighted_l1_summed_over_components(case):
  flows, gt = case
  got = float(loss.sequence_loss(jnp.asarray(flows), jnp.asarray(gt), gamma=0.8))
  assert got == pytest.approx(_hand_loss(flows, gt, 0.8), rel=1e-5)
  # The last iteration has weight 1 and the first gamma^(N-1): one iteration alone is its plain L1 mean.
  single = float(loss.sequence_loss(jnp.asarray(flows[-1:]), jnp.asarray(gt), gamma=0.8))
  assert single == pytest.approx(np.abs(flows[-1] - gt).sum(-1).mean(), rel=1e-5)


def test_sequence_loss_mean_components_and_mask(case):
  flows, gt = case
  mean = float(loss.sequence_loss(jnp.asarray(flows), jnp.asarray(gt), 0.8, components='mean'))
  assert mean == pytest.approx(_hand_loss(flows, gt, 0.8) / 3, rel=1e-5)
  mask = (np.random.default_rng(1).random(gt.shape[:-1]) > 0.3).astype(np.float32)
  valid = loss.valid_mask(jnp.asarray(gt), jnp.asarray(mask), max_flow=1.5)
  want_valid = mask * (np.linalg.norm(gt, axis=-1) < 1.5)
  np.testing.assert_array_equal(np.asarray(valid), want_valid)
  masked = float(loss.sequence_loss(jnp.asarray(flows), jnp.asarray(gt), 0.8, valid=valid))
  assert masked == pytest.approx(_hand_loss(flows, gt, 0.8, want_valid), rel=1e-5)
  assert loss.valid_mask(jnp.asarray(gt)) is None
  with pytest.raises(ValueError, match='components'):
    loss.sequence_loss(jnp.asarray(flows), jnp.asarray(gt), components='max')


def test_endpoint_error_metrics(case):
  flows, gt = case
  want = np.sqrt(((flows[-1] - gt) ** 2).sum(-1))
  np.testing.assert_allclose(np.asarray(loss.endpoint_error(jnp.asarray(flows[-1]), jnp.asarray(gt))), want,
                             rtol=1e-6)
  assert float(loss.flow_metrics(jnp.asarray(flows[-1]), jnp.asarray(gt))['epe']) == pytest.approx(want.mean(),
                                                                                                    rel=1e-6)
  valid = np.zeros(gt.shape[:-1], np.float32)
  valid[0, 0, 0, 0] = 1
  got = float(loss.flow_metrics(jnp.asarray(flows[-1]), jnp.asarray(gt), jnp.asarray(valid))['epe'])
  assert got == pytest.approx(want[0, 0, 0, 0], rel=1e-6)
  # The host-side version takes the file layout (3, X0, X1, X2).
  np.testing.assert_allclose(metrics.endpoint_error(np.moveaxis(flows[-1, 0], -1, 0), np.moveaxis(gt[0], -1, 0)),
                             want[0], rtol=1e-6)


def test_summarize():
  s = metrics.summarize([1.0, 2.0, 3.0, 4.0])
  assert s['n'] == 4 and s['mean'] == 2.5 and s['median'] == 2.5 and s['min'] == 1 and s['max'] == 4
  assert s['p90'] == pytest.approx(3.7) and s['std'] == pytest.approx(np.std([1, 2, 3, 4]))
  with pytest.raises(ValueError):
    metrics.summarize([])


def _hand_correlation_loss(f0, f1, gt_low):
  """The correlation loss written plainly: softmax over targets, trilinear soft targets, inside-only mean."""
  b, *grid, c = f0.shape
  n = int(np.prod(grid))
  total, count = 0.0, 0
  for s in range(b):
    logits = f0[s].reshape(n, c).astype(np.float64) @ f1[s].reshape(n, c).T.astype(np.float64) / np.sqrt(c)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    for p, idx in enumerate(np.ndindex(*grid)):
      t = np.asarray(idx, np.float64) + gt_low[s][idx]
      if np.any(t < 0) or np.any(t > np.asarray(grid) - 1):
        continue
      base = np.minimum(np.floor(t), np.asarray(grid) - 2)
      frac = t - base
      nll = 0.0
      for corner in np.ndindex(2, 2, 2):
        q = (base + corner).astype(int)
        w = np.prod(np.where(np.asarray(corner) == 1, frac, 1 - frac))
        nll -= w * logp[p, np.ravel_multi_index(q, grid)]
      total += nll
      count += 1
  return total / max(count, 1)


def test_correlation_loss_matches_a_plain_computation():
  rng = np.random.default_rng(3)
  f0 = rng.normal(size=(2, 4, 3, 5, 6)).astype(np.float32)
  f1 = rng.normal(size=(2, 4, 3, 5, 6)).astype(np.float32)
  # A full-resolution flow (stride 2) whose feature-grid version is known exactly: a constant field.
  shift = np.array([0.6, -1.3, 0.25], np.float32)
  gt = np.broadcast_to(shift * 2, (2, 8, 6, 10, 3)).astype(np.float32)
  got = float(loss.correlation_loss(jnp.asarray(f0), jnp.asarray(f1), jnp.asarray(gt)))
  want = _hand_correlation_loss(f0, f1, np.broadcast_to(shift, (2, 4, 3, 5, 3)))
  assert got == pytest.approx(want, rel=1e-4)


def test_correlation_loss_rewards_features_that_match_the_motion():
  rng = np.random.default_rng(4)
  f1 = rng.normal(size=(1, 6, 6, 6, 16)).astype(np.float32) * 3
  gt = np.zeros((1, 12, 12, 12, 3), np.float32)
  gt[..., 2] = 2.0  # one feature voxel along axis 2 at stride 2
  matched = np.roll(f1, -1, axis=3)  # f0(p) = f1(p + (0, 0, 1)): the features see the true motion
  unmatched = rng.normal(size=f1.shape).astype(np.float32) * 3
  good = float(loss.correlation_loss(jnp.asarray(matched), jnp.asarray(f1), jnp.asarray(gt)))
  bad = float(loss.correlation_loss(jnp.asarray(unmatched), jnp.asarray(f1), jnp.asarray(gt)))
  assert good < 0.1 * bad
