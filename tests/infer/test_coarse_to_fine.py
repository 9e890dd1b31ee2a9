"""Coarse-to-fine: the coarse flow reaches the fine arm on its feature grid, in feature voxels, per tile."""

import jax.numpy as jnp
import numpy as np
import pytest

from raftdvc_jax.infer import coarse_to_fine
from raftdvc_jax.infer import strategies
from raftdvc_jax.infer import tiled
from raftdvc_jax.model.raft import upsample_flow


def model_upsampled(low, size):
  """What the model emits for a feature-grid flow low (h0, h1, h2, 3): (3, X0, X1, X2) in voxels."""
  return np.moveaxis(np.asarray(upsample_flow(jnp.asarray(low)[None], size)[0]), -1, 0)


@pytest.mark.parametrize('size, stride', [((33, 33, 33), 4), ((29, 21, 17), 4), ((25, 41, 9), 2), ((17, 17, 17), 8)])
def test_inverts_the_models_upsampling_where_nodes_fall_on_voxels(size, stride):
  grid = tuple(-(-n // stride) for n in size)
  low = np.random.default_rng(0).normal(0, 2, (*grid, 3)).astype(np.float32)
  back = coarse_to_fine.to_feature_grid(model_upsampled(low, size), stride)
  assert back.shape == (*grid, 3) and back.dtype == np.float32
  np.testing.assert_allclose(back, low, atol=1e-5)


@pytest.mark.parametrize('size, stride', [((32, 32, 32), 4), ((30, 21, 18), 4), ((24, 40, 10), 2)])
def test_inverts_the_models_upsampling_of_linear_flows_at_any_size(size, stride):
  grid = tuple(-(-n // stride) for n in size)
  i = np.stack(np.meshgrid(*(np.arange(h, dtype=np.float64) for h in grid), indexing='ij'), -1)
  low = (i @ np.asarray([[0.3, -0.1, 0.2], [0.0, 0.5, -0.4], [0.1, 0.1, 0.1]]) + [1.0, -2.0, 0.5]).astype(np.float32)
  back = coarse_to_fine.to_feature_grid(model_upsampled(low, size), stride)
  np.testing.assert_allclose(back, low, atol=2e-5)


def test_constant_flow_is_divided_by_the_stride():
  flow = np.empty((3, 32, 32, 32), np.float32)
  flow[:] = np.asarray([8.0, -4.0, 2.0])[:, None, None, None]
  out = coarse_to_fine.to_feature_grid(flow, 4)
  assert out.shape == (8, 8, 8, 3)
  np.testing.assert_allclose(out, np.broadcast_to([2.0, -1.0, 0.5], out.shape), rtol=1e-6)


A = np.asarray([[0.05, 0.01, 0.0], [0.0, -0.03, 0.02], [0.01, 0.0, 0.04]])
B = np.asarray([1.5, -2.0, 0.5])


def linear_flow(shape):
  """u(x) = A x + B as (3, X0, X1, X2) float32."""
  g = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing='ij'))
  return (np.einsum('ij,j...->i...', A, g) + B[:, None, None, None]).astype(np.float32)


def test_per_tile_flow_init_uses_the_tiles_own_grid():
  coarse = linear_flow((40, 36, 44))
  fn = coarse_to_fine.flow_init_fn(coarse, 4)
  origin, tile = (8, 20, 5), (24, 16, 30)
  init = fn(origin, tile)
  grid = tuple(-(-t // 4) for t in tile)
  assert init.shape == (*grid, 3)
  # Feature voxel i of the tile sits at global voxel origin + i * (t - 1) / (h - 1); units are t / h voxels.
  pos = [o + np.arange(h) * (t - 1) / (h - 1) for o, t, h in zip(origin, tile, grid)]
  p = np.stack(np.meshgrid(*pos, indexing='ij'))
  expect = np.einsum('ij,j...->...i', A, p) + B
  expect = expect * np.asarray([h / t for t, h in zip(tile, grid)])
  np.testing.assert_allclose(init, expect, atol=1e-5)


def test_runner_hands_each_tile_its_scaled_flow_init():
  shape, stride = (37, 30, 41), 4
  coarse = linear_flow(shape)
  calls = {'n': 0}

  def fine_stand_in(vol0, vol1, flow_init):
    # A fine arm that returns its starting flow, upsampled like the model does: a perfect hand-over returns
    # the coarse flow (trilinear interpolation reproduces a linear field exactly).
    calls['n'] += 1
    return upsample_flow(flow_init, vol0.shape[1:])

  vol = np.zeros(shape, np.float32)
  flow = tiled.run_tiled(fine_stand_in, vol, vol, tile=20, overlap=0.5, batch=4, progress=False,
                         flow_init_fn=coarse_to_fine.flow_init_fn(coarse, stride), init_stride=stride)
  np.testing.assert_allclose(flow, coarse, atol=1e-4)
  assert calls['n'] == 1  # traced once


def test_refusals():
  with pytest.raises(ValueError, match='flow'):
    coarse_to_fine.to_feature_grid(np.zeros((2, 8, 8, 8)), 4)
  with pytest.raises(ValueError, match='coarse flow'):
    coarse_to_fine.flow_init_fn(np.zeros((8, 8, 8)), 4)
  vol = np.zeros((16, 16, 16), np.float32)
  with pytest.raises(ValueError, match='init_stride'):
    tiled.run_tiled(lambda a, b, c: a, vol, vol, tile=8, progress=False,
                    flow_init_fn=coarse_to_fine.flow_init_fn(np.zeros((3, 16, 16, 16)), 4))


def test_strategies():
  fast, balanced, accurate = (strategies.get(n) for n in ('fast', 'balanced', 'accurate'))
  assert fast.iters < balanced.iters < accurate.iters
  assert fast.overlap < balanced.overlap and accurate.coarse_to_fine and not balanced.coarse_to_fine
  assert strategies.resolve('accurate', iters=5, overlap=0.0).iters == 5
  assert strategies.resolve('accurate', coarse_to_fine=False).coarse_to_fine is False
  assert strategies.resolve().name == 'balanced'
  for bad in [dict(name='slow'), dict(iters=0), dict(overlap=1.0), dict(blend='box')]:
    with pytest.raises(ValueError):
      strategies.resolve(**bad)


def test_params_and_flow_init_reach_the_function_in_order():
  shape, stride = (24, 20, 28), 4
  coarse = linear_flow(shape)

  def fine_stand_in(params, vol0, vol1, flow_init):
    return params['gain'] * upsample_flow(flow_init, vol0.shape[1:]) + (vol1 - vol0)[..., None]

  vol0 = np.zeros(shape, np.float32)
  flow = tiled.run_tiled(fine_stand_in, vol0, vol0 + 1.0, tile=16, overlap=0.5, batch=3, progress=False,
                         params={'gain': np.float32(2.0)}, init_stride=stride,
                         flow_init_fn=coarse_to_fine.flow_init_fn(coarse, stride))
  np.testing.assert_allclose(flow, 2.0 * coarse + 1.0, atol=2e-4)


class _CoarseStandIn:
  """A coarse arm whose flow is given: what Pipeline.estimate reads of a coarse FlowEstimator."""

  def __init__(self, flow):
    self.flow = flow

  def tiled(self, vol0, vol1, **kwargs):
    return self.flow, {'tiles': 1}


@pytest.mark.parametrize('volraft', [False, True], ids=['raftdvc', 'volraft'])
def test_pipeline_hands_the_coarse_flow_to_a_fine_arm_of_either_kind(volraft):
  """A fine arm that does not move (a zero flow head) returns the coarse flow it starts from: the hand-over
  undoes the model's whole upsampling, including VolRAFT's x8 (ModelConfig.flow_scale)."""
  from raftdvc_jax.infer.demo import random_variables  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer.estimator import FlowEstimator  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer.pipeline import Pipeline  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  config = ModelConfig(encoder_type='1/8', feature_dim=16, hidden_dim=16, context_dim=16, corr_levels=2,
                       corr_radius=2, iters=1, gru='conv' if volraft else 'sep',
                       sampler='volraft' if volraft else 'exact', volraft=volraft)
  assert config.flow_scale == (8.0 if volraft else 1.0)
  variables = random_variables(config)
  head = variables['params']['update_block']['flow_head']['conv2']
  head['kernel'], head['bias'] = np.zeros_like(head['kernel']), np.zeros_like(head['bias'])
  shape = (33, 33, 33)  # feature nodes on voxels: the hand-over is exact for any flow
  coarse = linear_flow(shape)
  vol = np.random.default_rng(0).random(shape, np.float32)
  pipe = Pipeline(FlowEstimator(config, variables), _CoarseStandIn(coarse), tile=0, iters=1)
  flow, _ = pipe.estimate(vol, vol)
  np.testing.assert_allclose(flow, coarse, atol=1e-4)
