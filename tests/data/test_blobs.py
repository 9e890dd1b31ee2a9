"""The Gaussian-blob generator: its flow is the motion between its two volumes, for every field."""

import numpy as np
import pytest
from scipy import ndimage

from raftdvc_jax.data import blobs


@pytest.mark.parametrize('kind', blobs.FIELDS)
def test_warping_the_deformed_volume_back_recovers_the_reference(kind):
  pair = blobs.make_pair(kind, 32, 1.0, (1, 2), noise=0.0)
  flow = pair['flow']
  assert flow.shape == (3, 32, 32, 32) and flow.dtype == np.float32
  assert np.abs(flow).max() == pytest.approx(1.0, rel=0.02)  # the amplitude is the largest component
  grid = np.indices(flow.shape[1:], dtype=np.float64)
  inner = (slice(4, -4),) * 3
  def residual(sign):
    back = ndimage.map_coordinates(pair['I2'].astype(np.float64), grid + sign * flow, order=3, mode='nearest')
    return np.abs(back - pair['I1'])[inner].mean()
  warped, wrong_way = residual(1), residual(-1)
  # Blobs move rigidly with u at their centre, so a strained field leaves a small shape residual; the flow
  # taken the other way round leaves a large one.
  assert warped < 0.2 * wrong_way, (warped, wrong_way)


def test_same_seed_same_pair_and_unknown_field_refused():
  a, b = (blobs.make_pair('sinusoid', 16, 1.0, 5) for _ in range(2))
  np.testing.assert_array_equal(a['I1'], b['I1'])
  np.testing.assert_array_equal(a['flow'], b['flow'])
  with pytest.raises(ValueError, match='shear'):
    blobs.make_pair('shear', 16, 1.0, 0)
