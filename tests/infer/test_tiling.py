"""Tile plans cover every voxel with one tile shape, blend weights are positive, the stitcher normalises."""

import numpy as np
import pytest

from raftdvc_jax.infer import tiling


@pytest.mark.parametrize('tile, expected', [
    (16, (16, 16, 16)), ('24', (24, 24, 24)), ('8,16,0', (8, 16, 0)), ((4, 5, 6), (4, 5, 6)), (0, (0, 0, 0))])
def test_parse_tile(tile, expected):
  assert tiling.parse_tile(tile) == expected


@pytest.mark.parametrize('tile', ['a', '8,8', (8, -1, 8), 2.5, '1,2,3,4'])
def test_parse_tile_refuses(tile):
  with pytest.raises(ValueError, match='tile'):
    tiling.parse_tile(tile)


@pytest.mark.parametrize('size, tile, overlap', [
    (37, 16, 0.5), (29, 16, 0.0), (45, 16, 0.75), (16, 16, 0.5), (17, 16, 0.5), (100, 33, 0.3), (5, 16, 0.5)])
def test_axis_starts_cover_with_inward_shifted_last_tile(size, tile, overlap):
  starts = tiling.axis_starts(size, tile, overlap)
  t = min(tile, size)
  assert starts[0] == 0 and starts[-1] == size - t  # the last tile ends at the border, no padding
  assert starts == sorted(set(starts))
  covered = np.zeros(size, int)
  for s in starts:
    covered[s:s + t] += 1
  assert covered.min() >= 1
  step = max(1, round(t * (1 - overlap)))
  assert all(b - a <= step for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize('shape, tile, overlap', [
    ((37, 29, 45), 16, 0.5), ((37, 29, 45), (16, 8, 24), 0.25), ((20, 20, 20), 32, 0.5), ((33, 17, 40), '0,8,16', 0.6)])
def test_plan_covers_every_voxel_with_one_tile_shape(shape, tile, overlap):
  plan = tiling.plan_tiles(shape, tile, overlap)
  requested = tiling.parse_tile(tile)
  assert plan.tile == tuple(n if t == 0 else min(t, n) for t, n in zip(requested, shape))
  count = np.zeros(shape, int)
  for origin in plan.origins:
    assert all(0 <= o and o + t <= n for o, t, n in zip(origin, plan.tile, shape))
    count[plan.slices(origin)] += 1
  assert count.min() >= 1
  assert len(plan.origins) == plan.num_tiles


def test_volume_no_larger_than_a_tile_is_one_tile():
  plan = tiling.plan_tiles((20, 18, 19), 32, 0.5)
  assert plan.origins == [(0, 0, 0)] and plan.tile == (20, 18, 19)


def test_plan_refuses_tiles_and_volumes_below_the_model_minimum():
  with pytest.raises(ValueError, match=r'tile .* smaller than the model accepts.*>= 13'):
    tiling.plan_tiles((64, 64, 64), 8, 0.5, min_size=13)
  with pytest.raises(ValueError, match=r'volume .* smaller than the model accepts'):
    tiling.plan_tiles((64, 10, 64), 32, 0.5, min_size=13)
  with pytest.raises(ValueError, match='overlap'):
    tiling.plan_tiles((64, 64, 64), 32, 1.0)
  with pytest.raises(ValueError, match='overlap'):
    tiling.plan_tiles((64, 64, 64), 32, -0.1)


def test_mask_selects_only_tiles_holding_a_mask_voxel():
  shape = (40, 40, 40)
  plan = tiling.plan_tiles(shape, 16, 0.0)
  mask = np.zeros(shape, bool)
  mask[2, 3, 4] = True
  mask[39, 39, 39] = True
  assert plan.select(mask) == [(0, 0, 0), (24, 24, 24)]
  assert plan.select(None) == plan.origins


@pytest.mark.parametrize('kind', tiling.BLENDS)
@pytest.mark.parametrize('tile', [(16, 16, 16), (9, 12, 7), (1, 5, 2)])
def test_blend_weights_positive_symmetric_peaked(kind, tile):
  w = tiling.blend_weights(tile, kind, 0.5)
  assert w.shape == tile and w.dtype == np.float32
  assert w.min() > 0
  assert w.max() == pytest.approx(1.0)
  np.testing.assert_allclose(w, w[::-1, ::-1, ::-1], rtol=1e-6)
  centre = tuple(n // 2 for n in tile)
  assert w[centre] >= w[0, 0, 0]


def test_blend_shapes():
  g = tiling.blend_weights((64, 1, 1), 'gaussian')[:, 0, 0]
  sigma = 64 / 6
  assert g[0] == pytest.approx(np.exp(-0.5 * (31.5**2 - 0.5**2) / sigma**2), rel=1e-4)  # edge / peak
  assert (tiling.blend_weights((8, 8, 8), 'uniform') == 1).all()
  assert (tiling.blend_weights((8, 8, 8), 'cosine', overlap=0.0) == 1).all()  # no overlap: nothing to taper
  c = tiling.blend_weights((40, 1, 1), 'cosine', overlap=0.25)[:, 0, 0]
  assert (c[12:28] == 1).all() and c[0] < 0.05  # tapers span the 10-voxel overlap at each end
  with pytest.raises(ValueError, match='blend'):
    tiling.blend_weights((8, 8, 8), 'hann')


@pytest.mark.parametrize('memmap', [False, True])
def test_stitcher_normalises_by_accumulated_weight(memmap):
  st = tiling.Stitcher((6, 4, 4), memmap=memmap)
  assert st.memmapped == memmap
  f1 = np.broadcast_to(np.asarray([1.0, 2.0, 3.0], np.float32), (4, 4, 4, 3))
  f2 = np.broadcast_to(np.asarray([5.0, 6.0, 7.0], np.float32), (4, 4, 4, 3))
  st.add((0, 0, 0), f1, np.full((4, 4, 4), 3.0, np.float32))
  st.add((1, 0, 0), f2, np.full((4, 4, 4), 1.0, np.float32))
  out = np.asarray(st.result(rows=1))
  assert out.shape == (3, 6, 4, 4)
  np.testing.assert_allclose(out[:, 0], np.broadcast_to([[[1.0]], [[2.0]], [[3.0]]], (3, 4, 4)))
  np.testing.assert_allclose(out[:, 2], np.broadcast_to([[[2.0]], [[3.0]], [[4.0]]], (3, 4, 4)))  # (3f1+f2)/4
  np.testing.assert_allclose(out[:, 4], np.broadcast_to([[[5.0]], [[6.0]], [[7.0]]], (3, 4, 4)))
  assert (out[:, 5] == 0).all()  # never covered


def test_stitcher_zeroes_outside_mask():
  st = tiling.Stitcher((4, 4, 4))
  st.add((0, 0, 0), np.ones((4, 4, 4, 3), np.float32), np.ones((4, 4, 4), np.float32))
  mask = np.zeros((4, 4, 4), bool)
  mask[1:3] = True
  out = st.result(mask)
  assert (out[:, 1:3] == 1).all() and (out[:, 0] == 0).all() and (out[:, 3] == 0).all()
