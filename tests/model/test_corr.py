"""Correlation pyramid and lookup: impulse tests per sampler convention, peak test, parity with grid_sample."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from raftdvc_jax.model import corr
from raftdvc_jax.model.samplers import has_rescale
from raftdvc_jax.reference import torch_raft as ref

METHODS = ('reference', 'separable', 'slab')
SHAPE = (8, 12, 16)  # non-cubic, so a transposed axis cannot pass by accident
SPIKE = (3, 7, 11)


def _read(vol, query, sampler, method):
  """Reads a (S0, S1, S2) volume at one query point with radius 0."""
  level = jnp.asarray(vol, jnp.float32)[None, None]
  return float(corr.lookup_level(level, jnp.asarray([[query]], jnp.float32), 0, sampler, method).ravel()[0])


def _methods(sampler, shape=SHAPE):
  return [m for m in METHODS if not (m == 'slab' and has_rescale(shape, sampler))]


def _spike():
  vol = np.zeros(SHAPE, np.float32)
  vol[SPIKE] = 1.0
  return vol


@pytest.mark.parametrize('method', METHODS)
def test_exact_reads_the_spike_where_it_is(method):
  vol = _spike()
  assert _read(vol, (3, 7, 11), 'exact', method) == pytest.approx(1.0, abs=1e-6)
  assert _read(vol, (3, 11, 7), 'exact', method) == pytest.approx(0.0, abs=1e-6)  # transposed query
  assert _read(vol, (3, 9, 11), 'exact', method) == pytest.approx(0.0, abs=1e-6)
  assert _read(vol, (3, 7.25, 11), 'exact', method) == pytest.approx(0.75, abs=1e-6)
  assert _read(vol, (3, 7, 10.5), 'exact', method) == pytest.approx(0.5, abs=1e-6)
  assert _read(vol, (2.5, 6.5, 10.5), 'exact', method) == pytest.approx(0.125, abs=1e-6)


@pytest.mark.parametrize('method', METHODS)
def test_exact_matches_direct_indexing_at_integer_points(method):
  vol = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
  for point in [(0, 0, 0), (7, 11, 15), (2, 9, 4), (5, 3, 13)]:
    assert _read(vol, point, 'exact', method) == pytest.approx(float(vol[point]), abs=1e-5)


def test_legacy_v1_swaps_axes_1_and_2_with_rescale():
  vol = _spike()
  s0, s1, s2 = SHAPE
  # v1 reads vol[c0, c2 (S1-1)/(S2-1), c1 (S2-1)/(S1-1)]: solve for the query that lands on the spike.
  query = (3, SPIKE[2] * (s1 - 1) / (s2 - 1), SPIKE[1] * (s2 - 1) / (s1 - 1))
  for method in _methods('raftdvc_v1'):
    assert _read(vol, query, 'raftdvc_v1', method) == pytest.approx(1.0, abs=1e-4)
    assert _read(vol, SPIKE, 'raftdvc_v1', method) == pytest.approx(0.0, abs=1e-6)
  cube = np.zeros((16, 16, 16), np.float32)
  cube[3, 7, 11] = 1.0
  for method in METHODS:
    assert _read(cube, (3, 7, 11), 'raftdvc_v1', method) == pytest.approx(0.0, abs=1e-6)
    assert _read(cube, (3, 11, 7), 'raftdvc_v1', method) == pytest.approx(1.0, abs=1e-6)


def test_volraft_swaps_axes_0_and_2_with_rescale():
  vol = _spike()
  s0, s1, s2 = SHAPE
  # VolRAFT reads vol[c2 (S0-1)/(S2-1), c1 (S1-1)/(S0-1), c0 (S2-1)/(S1-1)].
  query = (SPIKE[2] * (s1 - 1) / (s2 - 1), SPIKE[1] * (s0 - 1) / (s1 - 1), SPIKE[0] * (s2 - 1) / (s0 - 1))
  for method in _methods('volraft'):
    assert _read(vol, query, 'volraft', method) == pytest.approx(1.0, abs=1e-4)
    assert _read(vol, SPIKE, 'volraft', method) == pytest.approx(0.0, abs=1e-6)
  cube = np.zeros((16, 16, 16), np.float32)
  cube[3, 7, 11] = 1.0
  for method in METHODS:
    assert _read(cube, (11, 7, 3), 'volraft', method) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize('sampler', corr.SAMPLER_AXES)
def test_lookup_matches_pytorch_grid_sample(sampler):
  """Whole windows around random (partly out-of-range) centroids agree with the reference's grid_sample."""
  rng = np.random.default_rng(1)
  for shape in [(5, 7, 9), (6, 6, 6)]:
    level = rng.normal(size=(2, 12, *shape)).astype(np.float32)
    centroid = rng.uniform(-2.5, max(shape) + 1.5, size=(2, 12, 3)).astype(np.float32)
    radius = 2
    d = np.arange(-radius, radius + 1, dtype=np.float32)
    offsets = np.stack(np.meshgrid(d, d, d, indexing='ij'), -1)
    coords = centroid[:, :, None, None, None, :] + offsets  # (B, N, K, K, K, 3)
    want = np.stack([
        ref.sample(torch.from_numpy(level[b][:, None]), torch.from_numpy(coords[b]), sampler)[:, 0].numpy()
        for b in range(2)])
    for method in _methods(sampler, shape):
      got = np.asarray(corr.lookup_level(jnp.asarray(level), jnp.asarray(centroid), radius, sampler, method))
      np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f'{sampler} {method} {shape}')


def test_rolled_features_peak_at_the_shift():
  """fmap0[x] = fmap1[x + s]: the correlation window peaks at offset s under the exact convention only."""
  rng = np.random.default_rng(1)
  fmap1 = rng.normal(size=(1, 16, 16, 16, 32)).astype(np.float32)
  shift = (1, 2, -1)
  fmap0 = np.roll(fmap1, [-s for s in shift], axis=(1, 2, 3))
  coords = np.stack(np.meshgrid(*[np.arange(16.0)] * 3, indexing='ij'), -1)[None].astype(np.float32)
  points = [(8, 8, 8), (8, 10, 5), (8, 12, 6), (7, 5, 11)]

  def argmax_offsets(sampler):
    fn = corr.AllPairsCorr.build(jnp.asarray(fmap0), jnp.asarray(fmap1), 1, 4, sampler)
    feats = np.asarray(fn(jnp.asarray(coords)))[0]
    return [tuple(np.array(np.unravel_index(feats[p].argmax(), (9, 9, 9))) - 4) for p in points]

  assert all(o == shift for o in argmax_offsets('exact'))
  assert not all(o == shift for o in argmax_offsets('raftdvc_v1'))


def test_pyramid_matches_pytorch_and_singleton_levels_read_zero():
  rng = np.random.default_rng(2)
  f0 = rng.normal(size=(1, 4, 5, 3, 16)).astype(np.float32)
  f1 = rng.normal(size=(1, 4, 5, 3, 16)).astype(np.float32)
  coords = (np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (4, 5, 3)], indexing='ij'), -1)
            + rng.uniform(-1, 1, size=(4, 5, 3, 3)).astype(np.float32))[None]
  fn = corr.AllPairsCorr.build(jnp.asarray(f0), jnp.asarray(f1), 2, 2, 'exact')
  assert fn.levels[1].shape == (1, 60, 2, 2, 1)  # floor of odd sizes, like avg_pool3d
  got = np.asarray(fn(jnp.asarray(coords)))
  block = ref.CorrBlockRef(torch.from_numpy(f0).permute(0, 4, 1, 2, 3), torch.from_numpy(f1).permute(0, 4, 1, 2, 3),
                           2, 2, 'exact')
  want = block(torch.from_numpy(coords).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).numpy()
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert np.all(got[..., 125:] == 0)  # level 1 is 2x2x1: a singleton axis, so grid_sample reads zeros
  assert np.abs(got[..., :125]).max() > 0.1


def test_too_many_levels_is_refused():
  f = jnp.zeros((1, 2, 2, 2, 8))
  with pytest.raises(ValueError, match='too small'):
    corr.AllPairsCorr.build(f, f, 3, 1)


@pytest.mark.parametrize('method', ('separable', 'slab'))
def test_fast_lookups_have_the_reference_gradient(method):
  rng = np.random.default_rng(3)
  level = jnp.asarray(rng.normal(size=(1, 6, 6, 7, 5)).astype(np.float32))
  centroid = jnp.asarray(rng.uniform(-1, 7, size=(1, 6, 3)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(1, 6, 5, 5, 5)).astype(np.float32))
  loss = lambda lv, m: jnp.sum(w * corr.lookup_level(lv, centroid, 2, 'exact', m))
  np.testing.assert_allclose(jax.grad(loss)(level, method), jax.grad(loss)(level, 'reference'), atol=1e-5)


def test_auto_matches_the_reference_and_slab_refuses_a_rescaled_level():
  rng = np.random.default_rng(4)
  centroid = jnp.asarray(rng.uniform(-1, 9, size=(1, 5, 3)).astype(np.float32))
  for shape in [(4, 4, 4), (10, 10, 10)]:  # one level 'auto' reads whole, one it reads by blocks
    level = jnp.asarray(rng.normal(size=(1, 5, *shape)).astype(np.float32))
    np.testing.assert_allclose(corr.lookup_level(level, centroid, 2, 'exact', 'auto'),
                               corr.lookup_level(level, centroid, 2, 'exact', 'reference'), atol=1e-5)
  assert corr.auto_lookup((10, 10, 10), 2, 'exact') == 'slab'
  assert corr.auto_lookup((4, 4, 4), 2, 'exact') == 'separable'
  with pytest.raises(ValueError, match='rescale'):
    corr.lookup_level(jnp.zeros((1, 1, 5, 7, 9)), jnp.zeros((1, 1, 3)), 1, 'volraft', 'slab')
