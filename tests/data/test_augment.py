"""Augmentation moves volumes and flow together: I2(x + u(x)) ~ I1(x) survives every transform."""

import itertools

import numpy as np
from scipy import ndimage
import pytest

from raftdvc_jax.data import augment
from raftdvc_jax.data import synthetic


@pytest.fixture(scope='module')
def pair():
  config = synthetic.SyntheticConfig(size=(24, 24, 24), particle_radius=2, density=4.8, disp_min=2, disp_max=3,
                                     deformation='affine', noise=False)
  p = synthetic.make_pair(config, 11)
  return {'vol0': p['I1'], 'vol1': p['I2'], 'flow': p['flow']}


def forward_corr(sample):
  """Correlation of vol0(x) with vol1(x + u(x)) over voxels whose target lies inside."""
  i1, i2, u = sample['vol0'], sample['vol1'], sample['flow']
  coords = np.indices(i1.shape, dtype=np.float32) + u
  inside = np.all((coords >= 0) & (coords <= np.reshape(i1.shape, (3, 1, 1, 1)) - 1), axis=0)
  warped = ndimage.map_coordinates(i2, coords, order=1)
  a, b = warped[inside] - warped[inside].mean(), i1[inside] - i1[inside].mean()
  return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_the_untouched_pair_is_consistent(pair):
  assert forward_corr(pair) > 0.95


@pytest.mark.parametrize('axis', [0, 1, 2])
def test_flip_keeps_consistency(pair, axis):
  out = augment.flip(pair, axis)
  assert forward_corr(out) == pytest.approx(forward_corr(pair), abs=1e-4)
  # Flipping twice is the identity.
  back = augment.flip(out, axis)
  for k in pair:
    np.testing.assert_array_equal(back[k], pair[k])


@pytest.mark.parametrize('axes', augment.PLANES)
@pytest.mark.parametrize('k', [1, 2, 3])
def test_rot90_keeps_consistency(pair, axes, k):
  out = augment.rot90(pair, k, axes)
  assert forward_corr(out) == pytest.approx(forward_corr(pair), abs=1e-4)
  # Rotating the flow's grid without rewriting its components breaks it.
  wrong = dict(out, flow=np.rot90(pair['flow'], k, axes=(axes[0] + 1, axes[1] + 1)))
  assert forward_corr(wrong) < 0.9


def test_rot90_of_a_known_field():
  # u = (0, 0, 1) everywhere: features move +1 along axis 2. A quarter turn in (1, 2) maps new[i, j] =
  # old[j, n - 1 - i], so the motion becomes -1 along axis 1.
  sample = {'flow': np.zeros((3, 4, 4, 4), np.float32)}
  sample['flow'][2] = 1
  out = augment.rot90(sample, 1, (1, 2))['flow']
  np.testing.assert_array_equal(out[0], 0)
  np.testing.assert_array_equal(out[1], -1)
  np.testing.assert_array_equal(out[2], 0)


def test_every_flip_and_rotation_combination(pair):
  base = forward_corr(pair)
  for flips, k, plane in itertools.product(itertools.product((0, 1), repeat=3), range(4), augment.PLANES):
    out = pair
    for axis, f in enumerate(flips):
      if f:
        out = augment.flip(out, axis)
    out = augment.rot90(out, k, plane)
    assert forward_corr(out) == pytest.approx(base, abs=1e-4), (flips, k, plane)


def test_random_augment_is_seeded_and_consistent(pair):
  aug = augment.Augment(crop=(20, 16, 20))
  a = aug(pair, np.random.default_rng(5))
  b = aug(pair, np.random.default_rng(5))
  for k in pair:
    np.testing.assert_array_equal(a[k], b[k])
    assert a[k].flags['C_CONTIGUOUS']
  seen_shapes = set()
  for seed in range(12):
    out = aug(pair, np.random.default_rng(seed))
    seen_shapes.add(out['vol0'].shape)
    assert out['flow'].shape == (3,) + out['vol0'].shape == (3,) + out['vol1'].shape
    assert forward_corr(out) > 0.9
  # keep_shape: only the (0, 2) plane has equal sides, so the crop shape always survives.
  assert seen_shapes == {(20, 16, 20)}


def test_crop_keeps_components_and_passes_other_keys(pair):
  extra = dict(pair, name='s', mask=np.ones((24, 24, 24), np.float32))
  out = augment.crop(extra, (2, 3, 4), (10, 11, 12))
  np.testing.assert_array_equal(out['flow'], pair['flow'][:, 2:12, 3:14, 4:16])
  assert out['mask'].shape == (10, 11, 12) and out['name'] == 's'
  with pytest.raises(ValueError, match='does not fit'):
    augment.random_crop(pair, np.random.default_rng(0), 30)


def test_bad_arguments():
  with pytest.raises(ValueError):
    augment.Augment(planes=((0, 0),))
  with pytest.raises(ValueError):
    augment.Augment(flip_prob=2)
  with pytest.raises(ValueError):
    augment.rot90({'flow': np.zeros((3, 2, 2, 2))}, 1, (0, 3))
