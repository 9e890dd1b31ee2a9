"""Model behaviour: config round trip, one trace per shape, gradients everywhere, flow_init, strict mapping."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raftdvc_jax.convert import mapping
from raftdvc_jax.model.config import ModelConfig, PRESETS, preset
from raftdvc_jax.model.raft import RAFTDVC, init_params

# Narrow channels keep these behaviour tests fast; parity with PyTorch at full width is test_parity's job.
TINY = ModelConfig(encoder_type='1/4', corr_levels=2, corr_radius=2, iters=3, feature_dim=32, hidden_dim=32,
                   context_dim=16)


def _pair(size, seed=0):
  rng = np.random.default_rng(seed)
  return rng.random((1, *size), dtype=np.float32), rng.random((1, *size), dtype=np.float32)


@pytest.mark.parametrize('name', sorted(PRESETS))
def test_config_round_trips_through_json(name):
  config = preset(name)
  assert ModelConfig.from_json(config.to_json()) == config


def test_config_refuses_bad_values_and_unknown_keys():
  with pytest.raises(ValueError, match='sampler'):
    ModelConfig(sampler='bilinear')
  with pytest.raises(ValueError, match='unknown keys'):
    ModelConfig.from_dict({'encoder_type': '1/4', 'corr_levles': 2})


def test_presets_have_the_published_parameter_counts():
  for name, count in [('s2', 2_121_459), ('s4', 2_121_459), ('s8', 2_121_459), ('volraft_120', 2_952_435)]:
    shapes = jax.eval_shape(lambda: init_params(preset(name), jax.random.key(0)))
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes['params'])) == count, name


def test_jitted_forward_traces_once_per_shape():
  variables = init_params(TINY, jax.random.key(0), optimize=False)
  model = RAFTDVC(TINY)

  @jax.jit
  @chex.assert_max_traces(n=2)
  def forward(v, a, b):
    return model.apply(v, a, b).flow

  for _ in range(3):
    forward(variables, *_pair((16, 20, 24)))
  for _ in range(2):
    forward(variables, *_pair((24, 16, 20)))
  with pytest.raises(AssertionError):
    forward(variables, *_pair((16, 16, 16)))


def test_gradients_reach_every_parameter():
  config = TINY.replace(uncertainty='nll')
  variables = init_params(config, jax.random.key(1), optimize=False)
  vol0, vol1 = _pair((16, 16, 20), seed=2)

  def loss(params):
    out = RAFTDVC(config).apply({'params': params}, vol0, vol1, train=True)
    return jnp.sum(jnp.abs(out.flows)) + jnp.sum(out.uncertainties ** 2)

  grads = jax.jit(jax.grad(loss))(variables['params'])  # jitted: op-by-op it takes ~1 min on 2 cores
  flat = jax.tree_util.tree_leaves_with_path(grads)
  dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
  assert not dead, f'no gradient reaches {dead}'
  assert all(np.all(np.isfinite(g)) for _, g in flat)


def test_flow_init_shifts_the_start():
  """With the flow head zeroed, nothing updates: the answer is the flow_init, upsampled and scaled by s."""
  config = TINY.replace(iters=2)
  variables = init_params(config, jax.random.key(3), optimize=False)
  head = variables['params']['update_block']['flow_head']['conv2']
  head['kernel'], head['bias'] = jnp.zeros_like(head['kernel']), jnp.zeros_like(head['bias'])
  vol0, vol1 = _pair((16, 16, 16), seed=4)
  init = jnp.zeros((1, 4, 4, 4, 3)).at[..., 1].set(1.5).at[..., 2].set(-0.25)
  apply = jax.jit(RAFTDVC(config).apply)
  out = apply(variables, vol0, vol1, flow_init=init)
  np.testing.assert_allclose(out.flow_low, init, atol=1e-6)
  np.testing.assert_allclose(out.flow[..., 1], 6.0, atol=1e-5)  # 1.5 feature voxels x stride 4
  np.testing.assert_allclose(out.flow[..., 2], -1.0, atol=1e-5)
  np.testing.assert_allclose(out.flow[..., 0], 0.0, atol=1e-6)
  zero = apply(variables, vol0, vol1)
  np.testing.assert_allclose(zero.flow, 0.0, atol=1e-6)


def test_training_call_returns_every_iteration_and_inference_only_the_last():
  variables = init_params(TINY, jax.random.key(5), optimize=False)
  vol0, vol1 = _pair((16, 16, 16), seed=6)
  apply = jax.jit(RAFTDVC(TINY).apply, static_argnames='train')  # op by op it takes ~25 s on 2 cores
  train = apply(variables, vol0, vol1, train=True)
  infer = apply(variables, vol0, vol1)
  assert train.flows.shape == (3, 1, 16, 16, 16, 3) and infer.flows is None
  np.testing.assert_allclose(train.flows[-1], infer.flow, atol=1e-5)


def test_bfloat16_compute_stays_close_to_float32():
  variables = init_params(TINY, jax.random.key(7), optimize=False)
  vol0, vol1 = _pair((16, 16, 16), seed=8)
  f32 = jax.jit(RAFTDVC(TINY).apply)(variables, vol0, vol1).flow
  bf16 = jax.jit(RAFTDVC(TINY, dtype=jnp.bfloat16).apply)(variables, vol0, vol1).flow
  assert bf16.dtype == jnp.float32
  assert float(jnp.abs(bf16 - f32).max()) < 0.1 * float(jnp.abs(f32).max()) + 0.05
  # The dtype must reach the convolutions: bf16 rounding changes the flow, and the program computes in bf16.
  assert float(jnp.abs(bf16 - f32).max()) > 1e-4
  jaxpr = str(jax.make_jaxpr(lambda v: RAFTDVC(TINY, dtype=jnp.bfloat16).apply(v, vol0, vol1).flow)(variables))
  assert 'bf16' in jaxpr


def test_mapping_round_trips_and_reports_a_readable_diff():
  config = TINY.replace(encoder_norm='batch', context_norm='group')
  variables = init_params(config, jax.random.key(9), optimize=False)
  state = mapping.to_torch(variables, config)
  assert 'fnet.layer2.0.downsample.1.running_mean' in state  # norm4 is registered twice in PyTorch
  back = mapping.from_torch(state, config)
  chex.assert_trees_all_equal(back, jax.device_get(variables))
  broken = dict(state)
  broken.pop('fnet.conv1.weight')
  broken['fnet.extra.weight'] = np.zeros(1)
  broken['update_block.encoder.convc1.weight'] = np.zeros((96, 10, 1, 1, 1))
  with pytest.raises(mapping.MappingError) as err:
    mapping.from_torch(broken, config)
  message = str(err.value)
  assert 'missing' in message and 'fnet.conv1.weight' in message
  assert 'unexpected' in message and 'fnet.extra.weight' in message
  assert 'mis-shaped' in message and 'convc1' in message


def test_volraft_keys_carry_the_module_prefix_and_no_encoder_level():
  keys = mapping.expected_keys(preset('volraft_120'))
  assert len(keys) == 106
  assert 'module.cnet.conv1.weight' in keys and 'module.update_block.gru.convz.weight' in keys
  assert keys['module.update_block.encoder.convc1.weight'] == (96, 1372, 1, 1, 1)


def test_input_checks():
  variables = init_params(TINY, jax.random.key(0), optimize=False)
  vol = np.zeros((1, 16, 16, 16), np.float32)
  with pytest.raises(ValueError, match='shapes differ'):
    RAFTDVC(TINY).apply(variables, vol, np.zeros((1, 16, 16, 20), np.float32))
  with pytest.raises(ValueError, match='too small'):
    RAFTDVC(TINY).apply(variables, np.zeros((1, 4, 16, 16), np.float32), np.zeros((1, 4, 16, 16), np.float32))
