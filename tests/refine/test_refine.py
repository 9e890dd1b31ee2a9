"""Sub-voxel refinement: B-spline against SciPy, shape algebra, IC-GN accuracy, flags, the API round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from raftdvc_jax.refine import api
from raftdvc_jax.refine import bspline
from raftdvc_jax.refine import dense
from raftdvc_jax.refine import icgn
from raftdvc_jax.refine import shape

SIZE = 40
AXES = (np.arange(14, 27, 4),) * 3  # 4^3 nodes; their subsets keep 5 voxels from the faces, where the
# spline's mirror boundary condition makes interpolation less exact
SUBSET = 16  # 17^3 voxels: averages the cubic B-spline's interpolation bias over more texture


def speckle(seed=0, size=SIZE, pad=8):
  """Smooth speckle on a grid padded by `pad` (so warps can sample outside the visible volume)."""
  rng = np.random.default_rng(seed)
  v = ndimage.gaussian_filter(rng.standard_normal((size + 2 * pad,) * 3), 2.0)
  return (v - v.min()) / (v.max() - v.min())


def warped_pair(displacement, seed=0, size=SIZE, pad=8, flat_from=None):
  """(f, g) with g(x) = f(X), x = X + u(X) (reference -> deformed), by fixed-point inversion of x(X).

  flat_from: the reference is a constant 0.5 where axis 0 >= flat_from (a featureless region).
  """
  big = speckle(seed, size, pad)
  if flat_from is not None:
    big[pad + flat_from:] = 0.5
  x = np.stack(np.meshgrid(*[np.arange(size, dtype=np.float64)] * 3, indexing='ij'))
  reference = x.copy()
  for _ in range(30):
    reference = x - displacement(reference)
  sample = lambda coords: ndimage.map_coordinates(big, coords + pad, order=5, mode='mirror')
  return sample(x).astype(np.float32), sample(reference).astype(np.float32)


def node_truth(displacement, axes=AXES):
  grid = np.stack(np.meshgrid(*axes, indexing='ij'), -1).reshape(-1, 3).T.astype(np.float64)
  return displacement(grid[:, :, None, None])[:, :, 0, 0].T


def test_bspline_matches_scipy_map_coordinates_after_prefilter():
  rng = np.random.default_rng(0)
  vol = rng.random((9, 12, 10)).astype(np.float32)  # non-cubic, so an axis mix-up cannot hide
  coef = jnp.asarray(bspline.prefilter(vol))
  points = rng.uniform(-3, 14, (400, 3)).astype(np.float32)  # inside and a little outside (mirror)
  expect = ndimage.map_coordinates(vol.astype(np.float64), points.T, order=3, mode='mirror')
  got = np.asarray(bspline.evaluate(coef, jnp.asarray(points)))
  np.testing.assert_allclose(got, expect, atol=1e-5)
  value, grad = bspline.evaluate_with_gradient(coef, jnp.asarray(points))
  auto = jax.vmap(jax.grad(lambda p: bspline.evaluate(coef, p[None])[0]))(jnp.asarray(points))
  np.testing.assert_allclose(np.asarray(value), expect, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(auto), atol=1e-5)
  assert float(jnp.abs(grad).max()) > 0.1
  voxels = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing='ij'), -1).reshape(-1, 3)
  _, grad_at_voxels = bspline.evaluate_with_gradient(coef, jnp.asarray(voxels, jnp.float32))
  np.testing.assert_allclose(bspline.grid_gradient(np.asarray(coef)).reshape(-1, 3),
                             np.asarray(grad_at_voxels), atol=1e-5)


def test_inverse_composition_of_a_warp_with_itself_is_identity():
  rng = np.random.default_rng(1)
  affine = np.zeros((3, 10), np.float32)
  affine[:, :4] = rng.normal(0, 0.05, (3, 4))
  np.testing.assert_allclose(np.asarray(shape.compose_inverse(jnp.asarray(affine), jnp.asarray(affine))), 0,
                             atol=1e-6)
  # Second order: exact up to the truncated third-order terms, which scale with the cube of the warp.
  quad = rng.normal(0, 1e-3, (3, 10)).astype(np.float32)
  assert float(jnp.abs(shape.compose_inverse(jnp.asarray(quad), jnp.asarray(quad))).max()) < 1e-6
  q = jnp.asarray(rng.uniform(-1, 1, (50, 3)), jnp.float32)
  basis = shape.monomials(q)
  m = shape.warp_matrix(jnp.asarray(affine))
  np.testing.assert_allclose(np.asarray(shape.monomials(shape.warp(jnp.asarray(affine), basis))),
                             np.asarray(basis @ m.T), atol=1e-5)


def test_recovers_subvoxel_translation_and_affine_field():
  shift = np.array([0.37, -1.62, 0.81])
  translation = lambda x: shift.reshape((3,) + (1,) * (x.ndim - 1)) + 0 * x
  f, g = warped_pair(translation)
  result = api.refine(f, g, subset=SUBSET, axes=AXES, batch_size=64)
  assert result.nodes.converged.all()
  np.testing.assert_allclose(result.nodes.displacement, node_truth(translation), atol=1e-3)
  assert result.flow.shape == (3, SIZE, SIZE, SIZE) and result.flow.dtype == np.float32
  hull = (slice(None),) + (slice(14, 27),) * 3  # between the outermost nodes the field interpolates them
  np.testing.assert_allclose(result.flow[hull], translation(np.zeros((3, 13, 13, 13))), atol=1e-3)

  grad = np.array([[0.02, -0.01, 0.015], [0.01, -0.02, 0.0], [-0.015, 0.005, 0.01]])
  centre = (SIZE - 1) / 2
  affine = lambda x: (np.array([0.6, -0.3, 1.2]).reshape((3,) + (1,) * (x.ndim - 1))
                      + np.einsum('cj,j...->c...', grad, x - centre))
  f, g = warped_pair(affine, seed=1)
  result = api.refine(f, g, subset=SUBSET, axes=AXES, batch_size=64)
  assert result.nodes.converged.all()
  np.testing.assert_allclose(result.nodes.displacement, node_truth(affine), atol=1e-3)
  np.testing.assert_allclose(result.nodes.gradient, np.broadcast_to(grad, (64, 3, 3)), atol=2e-3)
  # The dense field reproduces the affine field between the nodes, and continues it linearly beyond them
  # (with the spline's end slope, so the error grows with the distance past the last node).
  x = np.stack(np.meshgrid(*[np.arange(SIZE, dtype=np.float64)] * 3, indexing='ij'))
  np.testing.assert_allclose(result.flow[hull], affine(x)[hull], atol=1e-3)
  beyond = np.abs(result.flow - affine(x)).max()
  assert beyond < 0.1 < np.abs(result.flow - affine(np.full_like(x, centre))).max()


def test_second_order_removes_curvature_bias():
  centre = (SIZE - 1) / 2
  curv = 0.004  # u_0 = 0.5 + curv * (x1 - c)^2 : first-order subsets are biased by curv * (n^2 - 1) / 12

  def quadratic(x):
    u = np.zeros_like(x)
    u[0] = 0.5 + curv * (x[1] - centre) ** 2
    u[2] = -0.3 + 0.5 * curv * (x[0] - centre) ** 2
    return u

  f, g = warped_pair(quadratic, seed=2)
  truth = node_truth(quadratic)
  # No pre-smoothing: blurring both volumes is not exact under a strongly curved warp (docs/accuracy.md).
  first = api.refine(f, g, subset=SUBSET, axes=AXES, order=1, batch_size=64, smooth=0.0)
  second = api.refine(f, g, subset=SUBSET, axes=AXES, order=2, batch_size=64, smooth=0.0)
  err1 = np.abs(first.nodes.measured - truth).max()
  err2 = np.abs(second.nodes.measured - truth).max()
  assert second.nodes.converged.all()
  n = SUBSET + 1
  assert err1 > 0.5 * curv * (n * n - 1) / 12  # the bias is there with first order ...
  assert err2 < 2e-3 and err2 < err1 / 5  # ... and gone with second order
  np.testing.assert_allclose(second.nodes.coefficients[:, 0, 5], curv, atol=5e-4)  # d1^2 term of u_0


def test_featureless_region_is_flagged_and_filled():
  shift = np.array([0.4, 0.25, -0.6])
  translation = lambda x: shift.reshape((3,) + (1,) * (x.ndim - 1)) + 0 * x
  f, g = warped_pair(translation, seed=3, flat_from=14)  # the subsets of the nodes at 22 and 26 see no texture
  result = api.refine(f, g, subset=SUBSET, axes=AXES, batch_size=64)
  nodes = result.nodes
  flat = nodes.positions[:, 0] >= 22
  assert not nodes.converged[flat].any()
  np.testing.assert_array_equal(nodes.status[flat], icgn.FEATURELESS)
  textured = nodes.positions[:, 0] == 14
  assert nodes.converged[textured].all()
  # Filled from the converged nodes: finite, and within the range of the values they were filled from.
  assert np.isfinite(result.flow).all()
  good = nodes.measured[nodes.converged]
  filled = nodes.displacement[~nodes.converged]
  assert (filled >= good.min(0) - 1e-6).all() and (filled <= good.max(0) + 1e-6).all()
  np.testing.assert_array_equal(nodes.displacement[nodes.converged], good)


def test_node_filter_keeps_quadratic_fields_and_fill_uses_neighbours():
  axes = [np.arange(n, dtype=np.float64) for n in (7, 6, 8)]
  x = np.stack(np.meshgrid(*axes, indexing='ij'))
  field = np.stack([0.3 + 0.02 * x[0] ** 2 - 0.01 * x[1] * x[2], 0.1 * x[2], -0.05 * x[0] * x[1]])
  np.testing.assert_allclose(dense.filter_nodes(field, 5), field, atol=1e-10)
  noisy = field + np.random.default_rng(0).normal(0, 0.01, field.shape)
  assert np.abs(dense.filter_nodes(noisy, 5) - field).std() < 0.7 * np.abs(noisy - field).std()
  valid = np.ones(field.shape[1:], bool)
  valid[2:4, 2:4, 3] = False
  broken = np.where(valid, field, 1e3)
  filled = dense.fill_invalid(broken, valid)
  np.testing.assert_array_equal(filled[:, valid], field[:, valid])
  assert np.abs(filled - field).max() < 0.2
  # The dense operator interpolates the nodes and continues an affine field linearly past them.
  op = dense.axis_operator(np.array([3.0, 7.0, 11.0, 15.0]), 20)
  np.testing.assert_allclose(op @ (2.0 + 0.5 * np.array([3.0, 7.0, 11.0, 15.0])), 2.0 + 0.5 * np.arange(20),
                             atol=1e-12)


def test_api_round_trip_with_search_estimator_and_nodes_file(tmp_path):
  shift = np.array([2.3, -1.4, 0.6])  # beyond a voxel: the integer search must find it
  translation = lambda x: shift.reshape((3,) + (1,) * (x.ndim - 1)) + 0 * x
  f, g = warped_pair(translation, seed=4)
  import raftdvc_jax  # pylint: disable=import-outside-toplevel
  result = raftdvc_jax.refine(f, g, subset=SUBSET, axes=AXES, search_reach=3, batch_size=64)
  assert np.abs(result.nodes.initial - node_truth(translation)).max() <= 0.6  # the integer peak
  np.testing.assert_allclose(result.nodes.displacement, node_truth(translation), atol=1e-3)

  estimator = lambda v0, v1: np.broadcast_to(np.round(shift).astype(np.float32)[:, None, None, None],
                                             (3,) + v0.shape)
  refined = api.refine_estimate(estimator, f, g, subset=SUBSET, axes=AXES, batch_size=64)
  assert refined.nodes.search_reach == api.GUESS_REACH and not refined.nodes.fell_back.any()  # a good guess
  np.testing.assert_allclose(refined.nodes.displacement, node_truth(translation), atol=1e-3)

  flow_path = tmp_path / 'flow.npy'
  written = api.write_nodes(result.nodes, flow_path)
  assert written == str(tmp_path / 'flow_nodes.npz')
  back = api.read_nodes(written)
  for key in ('positions', 'displacement', 'correlation', 'converged', 'iterations'):
    np.testing.assert_array_equal(back[key], getattr(result.nodes, key))
  np.testing.assert_array_equal(back['axis1'], AXES[1])
  with pytest.raises(FileExistsError, match='flow_nodes.npz'):
    api.write_nodes(result.nodes, flow_path)
  api.write_nodes(refined.nodes, flow_path, overwrite=True)
  np.testing.assert_array_equal(api.read_nodes(written)['search_reach'], api.GUESS_REACH)
  assert api.read_nodes(written)['fell_back'].shape == (len(refined.nodes.positions),)
  assert api.nodes_path('out/F.tif') == 'out/F_nodes.npz'


def test_large_moves_are_found_and_a_wrong_guess_costs_nothing():
  """A 12-voxel rigid move: found without a guess (the search widens by itself), and from a random flow
  (what untrained weights give) every node falls back to that search, so the answer is the same."""
  shift = np.array([12.3, -11.6, 0.8])
  translation = lambda x: shift.reshape((3,) + (1,) * (x.ndim - 1)) + 0 * x
  f, g = warped_pair(translation, seed=5, size=64, pad=16)
  axes = (np.arange(26, 39, 4),) * 3  # the subsets and their moved copies stay inside the volume
  alone = api.refine(f, g, subset=SUBSET, axes=axes, batch_size=64)
  np.testing.assert_allclose(alone.nodes.displacement, node_truth(translation, axes), atol=2e-3)
  wrong = np.random.default_rng(0).normal(0.0, 3.0, (3, 64, 64, 64)).astype(np.float32)
  guided = api.refine(f, g, flow_init=wrong, subset=SUBSET, axes=axes, batch_size=64)
  assert guided.nodes.fell_back.mean() > 0.9, guided.nodes.fell_back.mean()
  np.testing.assert_allclose(guided.nodes.displacement, alone.nodes.displacement, atol=1e-3)
  # An explicit search_reach is taken as given: 3 voxels around a wrong guess cannot find the move.
  told = api.refine(f, g, flow_init=np.zeros_like(wrong), subset=SUBSET, axes=axes, batch_size=64, search_reach=3)
  assert np.abs(told.nodes.displacement - node_truth(translation, axes)).max() > 1.0


def test_a_guess_is_kept_where_the_search_matches_no_better():
  """Featureless subsets match nothing anywhere: the search must not replace the network's guess there."""
  shift = np.array([1.0, -1.0, 2.0])
  translation = lambda x: shift.reshape((3,) + (1,) * (x.ndim - 1)) + 0 * x
  f, g = warped_pair(translation, seed=6, flat_from=22)  # nodes at axis 0 >= 22 see a flat subset
  guess = np.broadcast_to(shift.astype(np.float32)[:, None, None, None], (3,) + f.shape)
  result = api.refine(f, g, flow_init=guess, subset=SUBSET, axes=AXES, batch_size=64)
  assert not result.nodes.fell_back.any()
  np.testing.assert_array_equal(result.nodes.initial, np.broadcast_to(shift, result.nodes.initial.shape))
  given = api.refine(f, g, flow_init=guess + 0.3, subset=SUBSET, axes=AXES, batch_size=64, search_reach=0)
  np.testing.assert_allclose(given.nodes.initial, np.broadcast_to(shift + 0.3, given.nodes.initial.shape))


def test_bad_input_is_one_clear_error():
  f = np.zeros((SIZE,) * 3, np.float32)
  with pytest.raises(ValueError, match='differ in shape'):
    api.refine(f, f[:-1])
  with pytest.raises(ValueError, match='order must be'):
    api.refine(f, f, order=3)
  with pytest.raises(ValueError, match='flow_init must have shape'):
    api.refine(f, f, flow_init=np.zeros((3, 4, 4, 4)))
  with pytest.raises(ValueError, match='node axis 0'):
    api.refine(f, f, axes=(np.array([2, 6]),) + AXES[1:])
  with pytest.raises(ValueError, match='too small'):
    api.refine(f[:8], f[:8])
