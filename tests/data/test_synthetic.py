"""Synthetic pairs: the flow explains the pair, the band holds, seeds reproduce."""

import json

import numpy as np
from scipy import ndimage
import pytest

from raftdvc_jax.data import datasets
from raftdvc_jax.data import synthetic


def _corr(a, b, mask):
  a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
  return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def warp_correlations(pair):
  """Correlation of I1(x) with I2 at x + u(x), at x - u(x) and at x, over voxels where all three are inside."""
  i1, i2, u = pair['I1'], pair['I2'], pair['flow']
  grid = np.indices(i1.shape, dtype=np.float32)
  top = np.asarray(i1.shape, np.float32).reshape(3, 1, 1, 1) - 1
  coords = {'forward': grid + u, 'backward': grid - u}
  mask = np.all([(c >= 0) & (c <= top) for c in coords.values()], axis=(0, 1))
  out = {k: _corr(ndimage.map_coordinates(i2, c, order=1), i1, mask) for k, c in coords.items()}
  out['unwarped'] = _corr(i2, i1, mask)
  # Where x + u(x) lands within 4 voxels of a face: a bead missing from the generation box would show here.
  fwd = coords['forward']
  near_face = np.any((fwd < 4) | (fwd > top - 4), axis=0) & np.all((fwd >= 0) & (fwd <= top), axis=0)
  out['border'] = _corr(ndimage.map_coordinates(i2, fwd, order=1), i1, near_face)
  return out


@pytest.mark.parametrize('family', synthetic.FAMILIES)
@pytest.mark.parametrize('seed', [0, 1])
def test_flow_explains_the_pair(family, seed):
  config = synthetic.preset('r2_32', deformation=family, noise=False)
  pair = synthetic.make_pair(config, seed)
  c = warp_correlations(pair)
  assert c['forward'] > 0.9 and c['border'] > 0.9, c
  assert c['forward'] > c['backward'], c
  assert c['forward'] > c['unwarped'], c


@pytest.mark.parametrize('family', synthetic.FAMILIES)
def test_max_displacement_in_band(family):
  config = synthetic.SyntheticConfig(size=(20, 24, 28), particle_radius=2, density=4.8, disp_min=1.5,
                                     disp_max=3.0, deformation=family, noise=False)
  for seed in range(4):
    pair = synthetic.make_pair(config, seed)
    peak = np.abs(pair['flow']).max()
    assert 1.5 - 1e-5 <= peak <= 3.0 + 1e-5
    assert peak == pytest.approx(pair['metadata']['target_max_disp'], rel=1e-5)


def test_shapes_dtypes_and_metadata():
  config = synthetic.SyntheticConfig(size=(16, 20, 24), deformation='affine')
  pair = synthetic.make_pair(config, 7)
  assert pair['I1'].shape == pair['I2'].shape == (16, 20, 24)
  assert pair['flow'].shape == (3, 16, 20, 24)
  assert {pair[k].dtype for k in ('I1', 'I2', 'flow')} == {np.dtype(np.float32)}
  meta = json.loads(json.dumps(pair['metadata']))  # JSON-ready as it stands
  assert meta['deformation'] == 'affine' and meta['seed'] == 7
  assert synthetic.SyntheticConfig.from_dict(meta['config']) == config
  assert meta['num_beads_placed'] == meta['num_beads_requested']
  # Noise on: never negative, and I1 is not its clean self.
  assert pair['I1'].min() >= 0
  clean = synthetic.make_pair(config.replace(noise=False), 7)
  assert not np.array_equal(clean['I1'], pair['I1'])
  np.testing.assert_array_equal(clean['flow'], pair['flow'])  # noise draws are separate from the rest


@pytest.mark.parametrize('family', synthetic.FAMILIES)
def test_same_seed_same_sample_different_seed_different(family):
  config = synthetic.preset('r2_32', size=16, deformation=family)
  a, b, c = (synthetic.make_pair(config, s) for s in (3, 3, 4))
  for k in ('I1', 'I2', 'flow'):
    np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a[k], c[k])
  assert a['metadata'] == b['metadata']


def test_presets_match_raftdvc_arms():
  expected = {'r2_32': (32, 2, 4.8, 2, 4), 'r4_64': (64, 4, 0.6, 4, 8), 'r8_128': (128, 8, 0.075, 8, 16)}
  for name, (size, radius, density, lo, hi) in expected.items():
    c = synthetic.PRESETS[name]
    assert (c.size, c.particle_radius, c.density, c.disp_min, c.disp_max) == (size, radius, density, lo, hi)
    assert (c.psf_sigma, c.edge_softness, c.min_distance_factor) == (0.8, 0.5, 1.3)
    assert (c.noise_gain, c.read_noise) == (500, 0.01)


def test_bead_count_follows_density():
  # About 157 beads per output volume in every arm; count bright local maxima of a clean I1 as a check.
  config = synthetic.preset('r2_32', noise=False, deformation='translation')
  i1 = synthetic.make_pair(config, 0)['I1']
  peaks = (i1 == ndimage.maximum_filter(i1, size=3)) & (i1 > 0.5)
  assert 110 < peaks.sum() < 200


def test_rsa_keeps_minimum_distance():
  rng = np.random.default_rng(0)
  p = synthetic.place_beads(rng, np.zeros(3), np.full(3, 30.0), 200, 2.6)
  assert len(p) == 200
  d = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(len(p)) * 1e9
  assert d.min() >= 2.6
  assert p.min() >= 0 and p.max() < 30


def test_render_beads_profile():
  vol = synthetic.render_beads(np.array([[5.0, 5.0, 5.0]]), np.array([2.0]), np.array([1.0]), (11, 11, 11), 0.5)
  assert vol[5, 5, 5] == 1.0  # inside r - s: full intensity
  assert vol[5, 5, 7] == pytest.approx(0.5)  # at r: half way up the soft edge
  assert vol[5, 5, 8] == 0.0  # beyond r + s
  # Overlapping beads composite by max, not by sum.
  two = synthetic.render_beads(np.array([[5.0, 5.0, 4.0], [5.0, 5.0, 6.0]]), np.array([2.0, 2.0]),
                               np.array([0.8, 0.6]), (11, 11, 11), 0.5)
  assert two.max() == pytest.approx(0.8)


def test_no_bead_cut_at_the_generation_box():
  # A translation of 12 voxels brings a 12-voxel slab of beads into view that was outside it in I1; they
  # must exist, so every plane of I2 along every axis still cuts beads (an empty slab reads 0).
  config = synthetic.SyntheticConfig(size=24, particle_radius=2, density=4.8, disp_min=12, disp_max=12,
                                     deformation='translation', noise=False)
  for seed in range(3):
    i2 = synthetic.make_pair(config, seed)['I2']
    for axis in range(3):
      assert np.moveaxis(i2, axis, 0).max(axis=(1, 2)).min() > 0.2, (seed, axis)


def test_config_errors():
  with pytest.raises(ValueError, match='disp_min'):
    synthetic.SyntheticConfig(disp_min=3, disp_max=2)
  with pytest.raises(ValueError, match='deformation'):
    synthetic.SyntheticConfig(deformation='shear')
  with pytest.raises(ValueError, match='seed'):
    synthetic.make_pair(synthetic.SyntheticConfig(size=8), -1)
  assert synthetic.parse_deformation(synthetic.RAFTDVC_MIX) == pytest.approx(
      {'translation': 0.1, 'affine': 0.45, 'quadratic': 0.45})


def test_family_mix_draws_each_family():
  config = synthetic.SyntheticConfig(size=8, density=1, deformation='translation:1,rotation:1', noise=False)
  drawn = {synthetic.make_pair(config, s)['metadata']['deformation'] for s in range(12)}
  assert drawn == {'translation', 'rotation'}


def test_synthetic_dataset_is_indexed_and_resumable():
  config = synthetic.SyntheticConfig(size=16, deformation='quadratic')
  ds = datasets.SyntheticDataset(config, seed=(9, 1))
  np.testing.assert_array_equal(ds[5]['vol1'], synthetic.make_pair(config, (9, 1, 5))['I2'])
  first = list(datasets.batches(ds, 2, num_steps=3, seed=4, augment=None, num_workers=2))
  resumed = list(datasets.batches(ds, 2, start_step=1, num_steps=2, seed=4, num_workers=1))
  for a, b in zip(first[1:], resumed):
    for k in ('vol0', 'vol1', 'flow'):
      np.testing.assert_array_equal(a[k], b[k])
  assert first[0]['vol0'].shape == (2, 16, 16, 16) and first[0]['flow'].shape == (2, 3, 16, 16, 16)
  np.testing.assert_array_equal(first[1]['flow'][0], ds[2]['flow'])  # endless source: position == index
