"""Parity of the Flax network with the PyTorch reference: random weights mapped across, 12 iterations."""

import jax
import numpy as np
import pytest
import torch

from raftdvc_jax.convert import mapping
from raftdvc_jax.model.config import ModelConfig, preset
from raftdvc_jax.model.raft import RAFTDVC
from raftdvc_jax.reference import torch_raft as ref

# (name, config, input size): every encoder type, both GRUs, every sampler, every norm, VolRAFT, uncertainty.
CASES = [
    ('s2_exact', preset('s2'), (16, 24, 20)),
    ('s4_v1', preset('s4').replace(sampler='raftdvc_v1'), (32, 24, 40)),
    ('s8_volraft_sampler_convgru', preset('s8').replace(sampler='volraft', gru='conv', corr_radius=3),
     (48, 40, 56)),
    ('full_res_group_batch', ModelConfig(encoder_type='1/1', corr_levels=2, corr_radius=2, encoder_norm='group',
                                         context_norm='batch'), (8, 12, 10)),
    ('late_stride_nll', ModelConfig(encoder_type='1/2-late-stride', corr_levels=2, corr_radius=3,
                                    uncertainty='nll'), (16, 12, 20)),
    ('shallow_up_mol', ModelConfig(encoder_type='1/1-shallow-up', corr_levels=2, corr_radius=2,
                                   uncertainty='mol', encoder_norm='batch'), (8, 12, 10)),
    ('volraft_120', preset('volraft_120'), (64, 64, 72)),
    ('volraft_fixed_3_levels', preset('volraft_120').replace(sampler='exact', corr_levels=3), (32, 40, 48)),
]


def _pair(size, seed):
  """A smooth random volume and a shifted, noisy copy, so the flows are realistic rather than wild."""
  rng = np.random.default_rng(seed)
  from scipy import ndimage
  vol0 = ndimage.gaussian_filter(rng.random(size), 1.0).astype(np.float32)
  vol1 = np.roll(vol0, (1, -1, 2), axis=(0, 1, 2)) + 0.01 * rng.normal(size=size).astype(np.float32)
  return vol0[None], vol1[None]


def _torch_model(config, seed):
  model = ref.init_weights(ref.build(config.to_dict()), seed)
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return model, mapping.from_torch(state, config)


def _tolerance(flow):
  return 1e-4 + 2e-5 * float(np.abs(flow).max())


@pytest.mark.parametrize('name,config,size', CASES, ids=[c[0] for c in CASES])
def test_final_flow_matches_pytorch(name, config, size):
  model, variables = _torch_model(config, seed=0)
  vol0, vol1 = _pair(size, seed=1)
  with torch.no_grad():
    out = model(torch.from_numpy(vol0[:, None]), torch.from_numpy(vol1[:, None]), iters=12, test_mode=True)
  want_low, want = out[0].numpy(), out[1].numpy()
  got = jax.jit(lambda v, a, b: RAFTDVC(config).apply(v, a, b, iters=12))(variables, vol0, vol1)
  flow = np.moveaxis(np.asarray(got.flow), -1, 1)
  assert flow.shape == want.shape == (1, 3, *size)
  assert np.abs(want).max() > 0.1, 'the reference flow is trivially small; the test would prove nothing'
  np.testing.assert_allclose(flow, want, rtol=0, atol=_tolerance(want))
  np.testing.assert_allclose(np.moveaxis(np.asarray(got.flow_low), -1, 1), want_low, rtol=0,
                             atol=_tolerance(want_low))
  if config.uncertainty != 'none':
    np.testing.assert_allclose(np.moveaxis(np.asarray(got.uncertainty), -1, 1), out[2].numpy(), rtol=0,
                               atol=_tolerance(out[2].numpy()))


def test_every_iteration_and_flow_init_match_pytorch():
  config = preset('s4')
  size = (16, 20, 24)
  model, variables = _torch_model(config, seed=3)
  vol0, vol1 = _pair(size, seed=4)
  flow_init = np.random.default_rng(5).normal(size=(1, 3, 4, 5, 6)).astype(np.float32)
  with torch.no_grad():
    want = model(torch.from_numpy(vol0[:, None]), torch.from_numpy(vol1[:, None]), iters=12,
                 flow_init=torch.from_numpy(flow_init))
  want = np.stack([w.numpy() for w in want])
  got = RAFTDVC(config).apply(variables, vol0, vol1, iters=12, flow_init=np.moveaxis(flow_init, 1, -1),
                              train=True)
  flows = np.moveaxis(np.asarray(got.flows), -1, 2)
  assert flows.shape == want.shape == (12, 1, 3, *size)
  for i in range(12):
    np.testing.assert_allclose(flows[i], want[i], rtol=0, atol=_tolerance(want[i]), err_msg=f'iteration {i}')
