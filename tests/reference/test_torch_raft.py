"""Checks of the PyTorch reference itself: layouts, parameter counts, sampler conventions, forward shapes."""

import itertools
import math

import numpy as np
import pytest
import torch

from raftdvc_jax.reference import torch_raft as ref

ARM = dict(corr_levels=2, corr_radius=4)
VOLRAFT = dict(encoder_type='1/8', corr_levels=4, corr_radius=3, gru='conv', sampler='volraft', volraft=True)


def _expected_layout(prefix, feature_dim, cnet, hidden_context, corr_channels, gru):
  """Key -> shape of the original state_dicts (spec Appendix A / B), generated from their pattern."""
  out = {}

  def conv(name, cout, cin, k):
    out[f'{prefix}{name}.weight'] = (cout, cin) + tuple(k)
    out[f'{prefix}{name}.bias'] = (cout,)

  for net, cout in (('fnet', feature_dim), (cnet, hidden_context)):
    conv(f'{net}.conv1', 32, 1, (7, 7, 7))
    cin = 32
    for layer, planes in enumerate((32, 64, 96), 1):
      for block in (0, 1):
        base, mid = f'{net}.layer{layer}.{block}', planes // 4
        conv(f'{base}.conv1', mid, cin if block == 0 else planes, (1, 1, 1))
        conv(f'{base}.conv2', mid, mid, (3, 3, 3))
        conv(f'{base}.conv3', planes, mid, (1, 1, 1))
        if block == 0 and layer > 1:
          conv(f'{base}.downsample.0', planes, cin, (1, 1, 1))
      cin = planes
    conv(f'{net}.conv2', cout, 96, (1, 1, 1))
  conv('update_block.encoder.convc1', 96, corr_channels, (1, 1, 1))
  conv('update_block.encoder.convf1', 64, 3, (7, 7, 7))
  conv('update_block.encoder.convf2', 32, 64, (3, 3, 3))
  conv('update_block.encoder.conv', 80, 128, (3, 3, 3))
  if gru == 'sep':
    for axis, k in (('h', (5, 1, 1)), ('w', (1, 5, 1)), ('d', (1, 1, 5))):
      for gate in 'zrq':
        conv(f'update_block.gru.conv{gate}_{axis}', 96, 243, k)
  else:
    for gate in 'zrq':
      conv(f'update_block.gru.conv{gate}', 96, 243, (3, 3, 3))
  conv('update_block.flow_head.conv1', 128, 96, (3, 3, 3))
  conv('update_block.flow_head.conv2', 3, 128, (3, 3, 3))
  return out


def _shapes(model):
  return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize('encoder_type', sorted(ref.ENCODERS))
def test_raftdvc_layout(encoder_type):
  model = ref.build(dict(ARM, encoder_type=encoder_type))
  assert isinstance(model, ref.RAFTDVCRef)
  assert sum(p.numel() for p in model.parameters()) == 2_121_459
  expected = _expected_layout('', 128, 'cnet.encoder', 160, 1458, 'sep')
  assert len(expected) == 118
  assert list(_shapes(model).items()) == list(expected.items())


def test_volraft_layout():
  model = ref.build(VOLRAFT)
  assert isinstance(model, ref.VolRAFTRef)
  assert sum(p.numel() for p in model.parameters()) == 2_952_435
  expected = _expected_layout('module.', 128, 'cnet', 160, 1372, 'conv')
  assert len(expected) == 106
  assert list(_shapes(model).items()) == list(expected.items())


def test_optional_keys():
  model = ref.build(dict(ARM, gru='conv'))
  assert len(model.state_dict()) == 106 and sum(p.numel() for p in model.parameters()) == 2_960_691
  for mode, cout in (('nll', 3), ('mol', 4)):
    sd = ref.build(dict(ARM, uncertainty=mode)).state_dict()
    assert sd['update_block.uncertainty_head.conv2.weight'].shape == (cout, 128, 3, 3, 3)
    assert sd['update_block.uncertainty_head.conv1.weight'].shape == (128, 96, 3, 3, 3)
  sd = ref.build(dict(ARM, encoder_norm='batch', context_norm='group')).state_dict()
  assert {'fnet.norm1.running_var', 'fnet.layer2.0.norm4.num_batches_tracked',
          'fnet.layer2.0.downsample.1.running_mean', 'cnet.encoder.layer3.0.downsample.1.weight',
          'cnet.encoder.layer3.0.norm4.bias'} <= set(sd)
  assert not any('norm' in k for k in ref.build(ARM).state_dict())
  assert ref.build(dict(ARM, context_norm='group')).cnet.encoder.layer1[0].norm1.num_groups == 1


def test_init_weights_deterministic():
  cfg = dict(ARM, encoder_norm='batch', context_norm='group')
  a = ref.init_weights(ref.build(cfg), 3).state_dict()
  b = ref.init_weights(ref.build(cfg), 3).state_dict()
  c = ref.init_weights(ref.build(cfg), 4).state_dict()
  assert all(torch.equal(a[k], b[k]) for k in a)
  assert not torch.equal(a['fnet.conv1.weight'], c['fnet.conv1.weight'])
  bn = a['fnet.layer2.0.norm4.running_mean']
  assert torch.equal(bn, a['fnet.layer2.0.downsample.1.running_mean']) and bn.abs().min() > 0
  assert not torch.allclose(a['cnet.encoder.norm1.weight'], torch.ones(32))


# ----------------------------------------------------------------------------------------------- sampler


def _query(vol, point, sampler):
  coords = torch.tensor(point, dtype=torch.float32).reshape(1, 1, 1, 1, 3)
  return ref.sample(vol, coords, sampler).item()


def _one_hot(shape, spike):
  vol = torch.zeros((1, 1) + shape)
  vol[(0, 0) + spike] = 1.0
  return vol


def _trilinear(vol, point):
  """Zero-padded trilinear interpolation of a numpy volume at array index `point`."""
  base = np.floor(point).astype(int)
  frac = np.asarray(point) - base
  total = 0.0
  for corner in itertools.product((0, 1), repeat=3):
    idx = base + corner
    if all(0 <= i < n for i, n in zip(idx, vol.shape)):
      total += np.prod([f if c else 1 - f for f, c in zip(frac, corner)]) * vol[tuple(idx)]
  return total


def test_exact_impulse_non_cubic():
  vol = _one_hot((8, 12, 16), (3, 7, 11))
  assert _query(vol, (3, 7, 11), 'exact') == pytest.approx(1.0)
  assert _query(vol, (3, 11, 7), 'exact') == pytest.approx(0.0, abs=1e-6)
  assert _query(vol, (3, 9, 11), 'exact') == pytest.approx(0.0, abs=1e-6)
  assert _query(vol, (3, 7.25, 11), 'exact') == pytest.approx(0.75, abs=1e-6)
  assert _query(vol, (3, 7, 10.5), 'exact') == pytest.approx(0.5, abs=1e-6)
  rand = torch.rand(1, 1, 8, 12, 16, generator=torch.Generator().manual_seed(0))
  for p in ((0, 0, 0), (7, 11, 15), (2, 9, 4), (5, 3, 13)):
    assert _query(rand, p, 'exact') == pytest.approx(rand[(0, 0) + p].item(), abs=1e-6)


def test_legacy_impulse_cube():
  vol = _one_hot((16, 16, 16), (3, 7, 11))
  assert _query(vol, (3, 7, 11), 'raftdvc_v1') == pytest.approx(0.0, abs=1e-6)
  assert _query(vol, (3, 11, 7), 'raftdvc_v1') == pytest.approx(1.0)


def test_volraft_impulse_cube():
  vol = _one_hot((16, 16, 16), (3, 7, 11))
  assert _query(vol, (3, 7, 11), 'volraft') == pytest.approx(0.0, abs=1e-6)
  assert _query(vol, (11, 7, 3), 'volraft') == pytest.approx(1.0)


# Where each convention reads query c on a volume of size s, in array indices (spec 1.3 and 1.7).
MAPPINGS = {
    'exact': lambda c, s: (c[0], c[1], c[2]),
    'raftdvc_v1': lambda c, s: (c[0], c[2] * (s[1] - 1) / (s[2] - 1), c[1] * (s[2] - 1) / (s[1] - 1)),
    'volraft': lambda c, s: (c[2] * (s[0] - 1) / (s[2] - 1), c[1] * (s[1] - 1) / (s[0] - 1),
                             c[0] * (s[2] - 1) / (s[1] - 1)),
}


@pytest.mark.parametrize('sampler', ref.SAMPLERS)
def test_sampler_mapping_non_cubic(sampler):
  shape = (5, 7, 9)
  gen = torch.Generator().manual_seed(1)
  vol = torch.rand((2, 3) + shape, generator=gen)
  coords = torch.rand(2, 3, 4, 5, 3, generator=gen) * 12 - 2  # partly outside, to exercise zero padding
  out = ref.sample(vol, coords, sampler)
  assert out.shape == (2, 3, 3, 4, 5)
  got = out.permute(0, 2, 3, 4, 1).reshape(2, -1, 3).double().numpy()
  vols, pts = vol.double().numpy(), coords.reshape(2, -1, 3).double().numpy()
  want = np.array([[[_trilinear(vols[b, ch], MAPPINGS[sampler](p, shape)) for ch in range(3)] for p in pts[b]]
                   for b in range(2)])
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_volraft_released_grid():
  # 60x80x80 patches give 8x10x10 features: level 0 reads (d*7/9, w*9/7, h).
  vol = torch.rand(1, 1, 8, 10, 10, generator=torch.Generator().manual_seed(2))
  h, w, d = 1.0, 3.5, 9.0
  want = _trilinear(vol[0, 0].double().numpy(), (d * 7 / 9, w * 9 / 7, h))
  assert _query(vol, (h, w, d), 'volraft') == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize('sampler', ref.SAMPLERS)
def test_singleton_level_reads_zero(sampler):
  fmap = torch.randn(1, 8, 2, 3, 2, generator=torch.Generator().manual_seed(0))
  corr_fn = ref.CorrBlockRef(fmap, fmap.flip(2), levels=2, radius=1, sampler=sampler)
  assert corr_fn.pyramid[1].shape[2:] == (1, 1, 1)
  out = corr_fn(ref.coords_grid(1, (2, 3, 2)) + 0.3)
  assert out.shape == (1, 54, 2, 3, 2)
  assert torch.all(out[:, 27:] == 0) and out[:, :27].abs().sum() > 0
  for shape in ((1, 4, 4), (4, 1, 3), (3, 4, 1)):
    vol = torch.rand((1, 1) + shape) + 1.0
    assert torch.all(ref.sample(vol, torch.zeros(1, 2, 2, 2, 3), sampler) == 0)


@pytest.mark.parametrize('sampler,peaks', [('exact', True), ('raftdvc_v1', False)])
def test_corr_block_rolled_peak(sampler, peaks):
  shift = (1, 2, -1)
  fmap1 = torch.randn(1, 32, 16, 16, 16, generator=torch.Generator().manual_seed(1))
  fmap0 = torch.roll(fmap1, shifts=tuple(-s for s in shift), dims=(2, 3, 4))  # fmap0[x] = fmap1[x + shift]
  corr = ref.CorrBlockRef(fmap0, fmap1, levels=1, radius=4, sampler=sampler)(ref.coords_grid(1, (16, 16, 16)))
  assert corr.shape == (1, 729, 16, 16, 16)
  found = []
  for v in ((8, 8, 8), (8, 10, 5), (8, 12, 6), (7, 5, 11)):
    a, b, c = np.unravel_index(int(corr[(0, slice(None)) + v].argmax()), (9, 9, 9))
    found.append((a - 4, b - 4, c - 4) == shift)
  assert all(found) if peaks else not all(found)


def test_corr_values_and_pyramid():
  gen = torch.Generator().manual_seed(5)
  f0, f1 = torch.randn(2, 1, 16, 4, 6, 4, generator=gen)
  corr_fn = ref.CorrBlockRef(f0, f1, levels=2, radius=1)
  full = torch.einsum('cp,cq->pq', f0[0].reshape(16, -1), f1[0].reshape(16, -1)) / 4.0
  torch.testing.assert_close(corr_fn.pyramid[0].reshape(96, 96), full)
  pooled = full.reshape(96, 2, 2, 3, 2, 2, 2).mean(dim=(2, 4, 6)).reshape(96, 12)
  torch.testing.assert_close(corr_fn.pyramid[1].reshape(96, 12), pooled)
  # Channel l*27 + a*9 + b*3 + c holds level l at coords/2^l + (a-1, b-1, c-1).
  out = corr_fn(ref.coords_grid(1, (4, 6, 4)))
  p, (a, b, c) = (2, 3, 1), (2, 0, 1)
  q = (p[0] + a - 1, p[1] + b - 1, p[2] + c - 1)
  assert out[(0, a * 9 + b * 3 + c) + p] == pytest.approx(full[np.ravel_multi_index(p, (4, 6, 4)),
                                                               np.ravel_multi_index(q, (4, 6, 4))].item(), abs=1e-5)


# ----------------------------------------------------------------------------------------------- forward

SIZE = (16, 24, 20)
SMALL = dict(feature_dim=16, hidden_dim=16, context_dim=16, corr_radius=1)  # shapes only: keep the CPU work low


def _pair(shape=(1, 1) + SIZE, seed=0):
  gen = torch.Generator().manual_seed(seed)
  return torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)


@pytest.mark.parametrize('encoder_type', sorted(ref.ENCODERS))
def test_forward_shapes(encoder_type):
  stride = ref.ENCODERS[encoder_type][3]
  size = SIZE if stride > 1 else (8, 12, 10)  # the full-resolution grids get a smaller non-cubic input
  model = ref.init_weights(ref.build(dict(ARM, **SMALL, encoder_type=encoder_type, iters=2)), 0)
  with torch.no_grad():
    flows = model(*_pair((1, 1) + size))
    low, up = model(*_pair((1, 1) + size), iters=1, test_mode=True)
  assert len(flows) == 2 and all(f.shape == (1, 3) + size for f in flows)
  assert all(torch.isfinite(f).all() for f in flows)
  assert low.shape == (1, 3) + tuple(math.ceil(n / stride) for n in size) and up.shape == (1, 3) + size


def test_volraft_forward_and_uncertainty_shapes():
  v0, v1 = _pair((2, 1, 16, 16, 24))
  with torch.no_grad():
    flows = ref.init_weights(ref.build(dict(VOLRAFT, corr_levels=2, iters=2)), 0)(v0, v1)
    assert len(flows) == 2 and flows[-1].shape == (2, 3, 16, 16, 24)
    for mode, cout in (('nll', 3), ('mol', 4)):
      model = ref.init_weights(ref.build(dict(ARM, **SMALL, encoder_type='1/4', uncertainty=mode)), 0)
      flows, uncs = model(v0, v1, iters=2)
      assert len(uncs) == 2 and uncs[-1].shape == (2, cout, 16, 16, 24) and flows[-1].shape == (2, 3, 16, 16, 24)
      assert [t.shape[1] for t in model(v0, v1, iters=1, test_mode=True)] == [3, 3, cout]


@pytest.mark.parametrize('volraft', [False, True])
def test_upsampling_scale_and_flow_init(volraft):
  # A flow head that outputs a constant makes the low-res flow flow_init + n*(1,2,3) exactly.
  cfg = dict(VOLRAFT if volraft else ARM, **SMALL, encoder_type='1/4', corr_levels=2)
  model = ref.init_weights(ref.build(cfg), 0)
  head = model.module.update_block.flow_head if volraft else model.update_block.flow_head
  with torch.no_grad():
    head.conv2.weight.zero_()
    head.conv2.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    flow_init = torch.randn(1, 3, 4, 6, 5, generator=torch.Generator().manual_seed(0))
    low, up = model(*_pair(), iters=2, flow_init=flow_init, test_mode=True)
    flows = model(*_pair(), iters=1)
  step = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1, 1)
  torch.testing.assert_close(low, flow_init + 2 * step)
  gain = 8.0 if volraft else 1.0
  ratio = torch.tensor([16 / 4, 24 / 6, 20 / 5]).reshape(1, 3, 1, 1, 1)
  torch.testing.assert_close(flows[0], (gain * ratio * step).expand(1, 3, *SIZE))


def test_input_normalisation():
  model = ref.init_weights(ref.build(dict(ARM, **SMALL, encoder_type='1/4')), 1)
  v0, v1 = _pair()
  with torch.no_grad():
    a = model(v0, v1, iters=1)[0]
    b = model(3.0 * v0 - 7.0, 3.0 * v1 - 7.0, iters=1)[0]
  torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
  n0, n1 = ref.normalize_pair(torch.full((1, 1, 2, 2, 2), 5.0), torch.full((1, 1, 2, 2, 2), 5.0))
  assert torch.all(n0 == 0) and torch.all(n1 == 0)
