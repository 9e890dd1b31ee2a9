"""raftdvc_jax.analysis: deformation gradient and strain measures on analytic fields, anisotropic voxels."""

import numpy as np
import pytest

from raftdvc_jax.analysis import strain
from raftdvc_jax.analysis import tensors

GRID = (9, 11, 13)
H = (0.5, 1.0, 2.0)  # anisotropic voxel size per array axis
# Physical displacement gradient d(u_i h_i)/d(X_j h_j) of the affine test field.
A = np.array([[0.01, 0.02, -0.03], [0.015, -0.02, 0.01], [0.005, 0.03, 0.02]])


def coords(grid=GRID):
  return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in grid], indexing='ij'))


def affine_flow(grad=A, h=H, grid=GRID):
  """u_i (voxels) with u_i h_i = sum_j grad_ij X_j h_j."""
  h = np.asarray(h)
  return np.einsum('ij,j...->i...', grad * h[None, :] / h[:, None], coords(grid)).astype(np.float32)


def at_every_voxel(t):
  return np.asarray(t)[..., None, None, None]


@pytest.mark.parametrize('window', [0, 3])
def test_affine_field_gives_exact_f_e_eps_everywhere(window):
  fields = strain.compute(affine_flow(), H, strain.StrainOptions(window=window, euler_almansi=True),
                          planes=4)
  f = np.eye(3) + A
  np.testing.assert_allclose(fields['F'], np.broadcast_to(at_every_voxel(f), (3, 3) + GRID), atol=1e-6)
  np.testing.assert_allclose(fields['green_lagrange'], np.broadcast_to(
      at_every_voxel(0.5 * (f.T @ f - np.eye(3))), (3, 3) + GRID), atol=1e-6)
  np.testing.assert_allclose(fields['small_strain'], np.broadcast_to(
      at_every_voxel(0.5 * (A + A.T)), (3, 3) + GRID), atol=1e-6)
  finv = np.linalg.inv(f)
  np.testing.assert_allclose(fields['euler_almansi'][:, :, 4, 5, 6], 0.5 * (np.eye(3) - finv.T @ finv), atol=1e-6)
  # Scalars against numpy: det F - 1, principal values, von Mises, polar rotation angle, physical |u|.
  e = 0.5 * (f.T @ f - np.eye(3))
  np.testing.assert_allclose(fields['volumetric_strain'], np.linalg.det(f) - 1, atol=1e-6)
  np.testing.assert_allclose(fields['principal_strains'][:, 4, 5, 6], np.linalg.eigvalsh(e)[::-1], atol=1e-6)
  dev = e - np.trace(e) / 3 * np.eye(3)
  np.testing.assert_allclose(fields['von_mises_strain'], np.sqrt(2 / 3 * np.sum(dev * dev)), rtol=1e-5)
  u, _, vt = np.linalg.svd(f)
  angle = np.degrees(np.arccos((np.trace(u @ vt) - 1) / 2))
  np.testing.assert_allclose(fields['rotation_angle'], angle, rtol=1e-4)
  phys = np.einsum('ij,j...->i...', A, coords() * np.asarray(H)[:, None, None, None])
  np.testing.assert_allclose(fields['displacement'], phys, atol=1e-5)
  np.testing.assert_allclose(fields['displacement_magnitude'], np.linalg.norm(phys, axis=0), atol=1e-5)


def test_quadratic_field_gives_exact_f_inside_with_central_differences():
  x = coords()
  c = np.array([[0.002, -0.001, 0.003], [0.001, 0.002, -0.002], [-0.003, 0.001, 0.001]])
  flow = np.stack([sum(c[i, j] * x[j] ** 2 for j in range(3)) + 0.01 * x[0] * x[2] for i in range(3)])
  fields = strain.compute(flow.astype(np.float32), H, strain.StrainOptions(), planes=3)
  h = np.asarray(H)
  grad = np.stack([np.stack([2 * c[i, j] * x[j] + 0.01 * (x[2] if j == 0 else x[0] if j == 2 else 0)
                             for j in range(3)]) for i in range(3)])  # du_i/dx_j in voxels
  expected = np.eye(3)[:, :, None, None, None] + grad * (h[:, None] / h[None, :])[:, :, None, None, None]
  inner = (slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
  np.testing.assert_allclose(fields['F'][inner], expected[inner], atol=2e-6)
  # On the border the one-sided difference is first order: it misses the curvature, as it should.
  assert np.abs(fields['F'][:, :, 0] - expected[:, :, 0]).max() > 1e-3


def test_mask_keeps_stencils_inside_and_nans_outside():
  flow = affine_flow()
  mask = np.ones(GRID, bool)
  mask[:, :4] = False
  flow[:, ~mask] = 50.0  # garbage outside the mask must not reach the gradients inside
  for window in (0, 5):
    fields = strain.compute(flow, H, strain.StrainOptions(window=window), mask=mask)
    assert np.isnan(fields['F'][:, :, ~mask]).all() and np.isnan(fields['von_mises_strain'][~mask]).all()
    np.testing.assert_allclose(fields['F'][:, :, mask], np.broadcast_to(
        (np.eye(3) + A)[:, :, None], (3, 3, mask.sum())), atol=1e-5)


def test_slabs_with_halos_match_one_block():
  rng = np.random.default_rng(0)
  flow = rng.normal(size=(3,) + GRID).astype(np.float32)
  options = strain.StrainOptions(window=3, principal_directions=True)
  whole = strain.compute(flow, H, options, planes=GRID[0])
  sliced = strain.compute(flow, H, options, planes=2)
  for name in whole:
    np.testing.assert_allclose(sliced[name], whole[name], atol=1e-5, err_msg=name)


def test_plane_fit_smooths_noise():
  rng = np.random.default_rng(1)
  flow = affine_flow() + rng.normal(scale=0.05, size=(3,) + GRID).astype(np.float32)
  exact = np.eye(3) + A
  err = {w: np.abs(strain.compute(flow, H, strain.StrainOptions(window=w))['F'][:, :, 2:-2, 2:-2, 2:-2]
                   - exact[:, :, None, None, None]).std() for w in (0, 5)}
  assert err[5] < err[0] / 4


def test_jacobi_eigen_matches_numpy_including_repeated_values():
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  mats = [rng.normal(size=(3, 3)) for _ in range(4)]
  mats = [m + m.T for m in mats] + [q @ np.diag([1.0, 1.0, 2.0]) @ q.T, np.eye(3), np.diag([3.0, -1.0, 2.0])]
  batch = np.stack(mats).astype(np.float32)  # (N, 3, 3)
  values, vectors = tensors.sym_eigen([[batch[:, i, j] for j in range(3)] for i in range(3)])
  values = np.stack([np.asarray(v) for v in values], axis=1)
  vectors = np.stack([np.stack([np.asarray(c) for c in v], axis=1) for v in vectors], axis=1)  # (N, k, c)
  for n, m in enumerate(batch):
    np.testing.assert_allclose(values[n], np.linalg.eigvalsh(m.astype(np.float64))[::-1], atol=1e-5)
    for k in range(3):
      np.testing.assert_allclose(m @ vectors[n, k], values[n, k] * vectors[n, k], atol=1e-5)
    np.testing.assert_allclose(vectors[n] @ vectors[n].T, np.eye(3), atol=1e-5)


def test_options_refuse_nonsense():
  with pytest.raises(ValueError, match='odd'):
    strain.StrainOptions(window=4)
  with pytest.raises(ValueError, match='measure'):
    strain.StrainOptions(measure='hencky')
  with pytest.raises(ValueError, match='voxel size'):
    strain.compute(affine_flow(), (1.0, 0.0, 1.0))
