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
