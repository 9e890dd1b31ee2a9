"""One mask rule (value >= 0.5 is inside) for inference tiles and output, strain analysis and training."""

import jax.numpy as jnp
import numpy as np

from raftdvc_jax.analysis import strain
from raftdvc_jax.data import masks
from raftdvc_jax.infer import tiling
from raftdvc_jax.train import loss


def soft_mask(shape=(16, 16, 16)):
  """0.8 in the first half of axis 0, 0.2 (a soft mask's unlikely tail) in the rest."""
  m = np.full(shape, 0.2, np.float32)
  m[:shape[0] // 2] = 0.8
  return m


def test_the_rule_reads_the_usual_masks_alike():
  for mask in (np.array([0, 1]), np.array([False, True]), np.array([0, 255], np.uint8), np.array([0.2, 0.8]),
               np.array([np.nan, 1.0]), np.array([0.49, 0.5])):
    assert masks.inside(mask).tolist() == [False, True], mask
  assert masks.inside(jnp.asarray([0.2, 0.8])).tolist() == [False, True]


def test_inference_runs_and_keeps_only_voxels_inside():
  mask = soft_mask()
  plan = tiling.plan_tiles(mask.shape, tile=8, overlap=0.0)
  assert sorted(o[0] for o in plan.select(mask)) == [0] * 4  # the tiles holding only 0.2 are skipped
  stitch = tiling.Stitcher(mask.shape)
  for origin in plan.origins:
    stitch.add(origin, np.ones((8, 8, 8, 3), np.float32), np.ones((8, 8, 8), np.float32))
  flow = stitch.result(mask)
  assert np.all(flow[:, :8] == 1) and np.all(flow[:, 8:] == 0)


def test_strain_and_the_training_loss_use_the_same_voxels():
  mask = soft_mask()
  fields = strain.compute(np.zeros((3, *mask.shape), np.float32), (1.0, 1.0, 1.0), mask=mask)
  e = np.asarray(fields['volumetric_strain'])
  assert np.all(np.isfinite(e[:8])) and np.all(np.isnan(e[8:]))
  valid = np.asarray(loss.valid_mask(jnp.zeros((1, *mask.shape, 3)), jnp.asarray(mask)[None]))
  np.testing.assert_array_equal(valid[0] > 0, masks.inside(mask))
