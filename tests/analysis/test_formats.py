"""raftdvc_jax.analysis files: .vti through VTK's own reader, spam TSV, pyALDVC npz/csv, TIFF stacks, figures."""

import csv

import numpy as np
import tifffile
import vtk
from vtk.util import numpy_support

from raftdvc_jax.analysis import aldvc
from raftdvc_jax.analysis import figures
from raftdvc_jax.analysis import nodes
from raftdvc_jax.analysis import peers
from raftdvc_jax.analysis import spam_tsv
from raftdvc_jax.analysis import strain
from raftdvc_jax.analysis import tiff_stacks
from raftdvc_jax.analysis import vti

GRID = (5, 6, 7)
H = (0.5, 1.0, 2.0)


def read_vti(path):
  reader = vtk.vtkXMLImageDataReader()
  reader.SetFileName(str(path))
  reader.Update()
  return reader.GetOutput()


def test_vti_is_the_right_way_round_for_vtk(tmp_path):
  flow = np.zeros((3,) + GRID, np.float32)
  flow[2] = 1.0   # along array axis 2 only: must be VTK +x
  flow[0, 4, 0, 0] = -3.0  # one voxel also moves along axis 0 (VTK z), at array index (4, 0, 0)
  scalar = np.arange(np.prod(GRID), dtype=np.float32).reshape(GRID)
  h = np.asarray(H, np.float32)
  vti.write_vti(tmp_path / 'f.vti', {'displacement': (flow[2] * h[2], flow[1] * h[1], flow[0] * h[0]),
                                     'scalar': scalar}, H, vectors='displacement')
  image = read_vti(tmp_path / 'f.vti')
  assert image.GetDimensions() == (7, 6, 5)           # (x, y, z) = array axes (2, 1, 0)
  assert image.GetSpacing() == (2.0, 1.0, 0.5)        # voxel size in (x, y, z) order
  data = image.GetPointData()
  assert data.GetVectors().GetName() == 'displacement'
  disp = numpy_support.vtk_to_numpy(data.GetArray('displacement'))
  values = numpy_support.vtk_to_numpy(data.GetArray('scalar'))
  for idx in [(0, 0, 0), (4, 0, 0), (1, 2, 3), (4, 5, 6)]:
    point = image.ComputePointId([idx[2], idx[1], idx[0]])  # VTK (i, j, k) = array (axis 2, 1, 0)
    assert values[point] == scalar[idx]
    np.testing.assert_allclose(disp[point], [2.0, 0.0, -1.5 if idx == (4, 0, 0) else 0.0])
  # The physical position of array index (4, 0, 0) is z = 4 * 0.5.
  assert image.GetPoint(image.ComputePointId([0, 0, 4])) == (0.0, 0.0, 2.0)


def test_spam_tsv_round_trip_and_layout(tmp_path):
  rng = np.random.default_rng(0)
  flow = rng.normal(size=(3,) + GRID).astype(np.float32)
  axes = nodes.node_axes(GRID, (2, 2, 3))
  assert [list(a) for a in axes] == [[0, 2, 4], [0, 2, 4], [0, 3, 6]]
  ix = np.ix_(*axes)
  disp = np.stack([flow[c][ix] for c in range(3)])
  f_vox = np.eye(3)[:, :, None, None, None] + rng.normal(scale=0.01, size=(3, 3) + disp.shape[1:])
  disp[:, 0, 0, 0] = np.nan  # one failed node
  path = tmp_path / 'spam.tsv'
  spam_tsv.write_spam_tsv(path, axes, disp, f_vox)
  lines = path.read_text().splitlines()
  header = lines[0].split('\t')
  # The column names spam's readCorrelationTSV looks up, in the order asked for.
  assert header[:16] == ['NodeNumber', 'Zpos', 'Ypos', 'Xpos', 'Zdisp', 'Ydisp', 'Xdisp', 'Fzz', 'Fzy', 'Fzx',
                         'Fyz', 'Fyy', 'Fyx', 'Fxz', 'Fxy', 'Fxx']
  assert {'returnStatus', 'deltaPhiNorm', 'iterations'} <= set(header)
  # Z-major node order (X fastest), as spam-regularStrain reshapes it; positions are array indices.
  second = dict(zip(header, lines[2].split('\t')))
  assert (second['Zpos'], second['Ypos'], second['Xpos']) == ('0', '0', '3')
  first = dict(zip(header, lines[1].split('\t')))
  assert first['returnStatus'] == '-5' and first['Zdisp'] == 'nan'
  field = spam_tsv.read_spam_tsv(path)
  assert field.grid_shape == (3, 3, 3) and len(field.valid) == 27 and not field.valid[0] and field.valid[1:].all()
  grid = np.stack(np.meshgrid(*axes, indexing='ij')).reshape(3, -1).T
  np.testing.assert_array_equal(field.positions, grid)
  np.testing.assert_allclose(field.displacement[1:], disp.reshape(3, -1).T[1:], atol=1e-6)
  np.testing.assert_allclose(field.F[1:], f_vox.reshape(3, 3, -1).transpose(2, 0, 1)[1:], atol=1e-6)
  errors = field.endpoint_errors(flow)
  assert np.isnan(errors[0]) and np.nanmax(errors) < 1e-6


def test_spam_f_is_in_voxel_units():
  f_phys = np.eye(3) + np.array([[0.0, 0.1, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  # d(u0 h0)/d(X1 h1) = 0.1 with h0 = 0.5, h1 = 1  ->  du0/dx1 = 0.1 * h1 / h0 = 0.2 voxels per voxel.
  np.testing.assert_allclose(spam_tsv.voxel_gradient(f_phys, H)[0, 1], 0.2)


def test_aldvc_npz_and_csv_reverse_to_xyz_and_back(tmp_path):
  rng = np.random.default_rng(1)
  flow = rng.normal(size=(3,) + GRID).astype(np.float32)
  axes = nodes.node_axes(GRID, 2)
  ix = np.ix_(*axes)
  disp = np.stack([flow[c][ix] for c in range(3)]).astype(np.float64)
  grad = rng.normal(scale=0.01, size=(3, 3) + disp.shape[1:])
  e = rng.normal(scale=0.01, size=(3, 3) + disp.shape[1:])
  vm = np.abs(e[0, 0])
  aldvc.write_aldvc_npz(tmp_path / 'a.npz', axes, disp, grad, e, vm, H, GRID)
  with np.load(tmp_path / 'a.npz') as z:
    # pyALDVC order: coordinates and U in (x, y, z) = array axes (2, 1, 0), x fastest.
    np.testing.assert_array_equal(z['coordinates'][1], [2, 0, 0])
    np.testing.assert_allclose(z['U_1'][5], disp[::-1].reshape(3, -1)[:, 5])
    np.testing.assert_allclose(z['F_1'][5, 0, 1], grad[2, 1].ravel()[5])  # du_x/dy = du2/dx1
    np.testing.assert_allclose(z['exy_1'], e[2, 1].ravel())
    np.testing.assert_array_equal(z['grid_shape'], [3, 3, 4])
    np.testing.assert_allclose(z['voxel_size'], H[::-1])
  field = aldvc.read_aldvc(tmp_path / 'a.npz')
  np.testing.assert_allclose(field.displacement, disp.reshape(3, -1).T)
  np.testing.assert_allclose(field.F[7], np.eye(3) + grad.reshape(3, 3, -1)[:, :, 7])
  assert np.nanmax(field.endpoint_errors(flow)) < 1e-6
  aldvc.write_aldvc_csv(tmp_path / 'a.csv', axes, disp, e, vm, H)
  with open(tmp_path / 'a.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0])[:7] == ['x', 'y', 'z', 'valid', 'disp_u', 'disp_v', 'disp_w']
  assert float(rows[3]['disp_u']) == np.float64(disp[2].ravel()[3] * H[2])  # physical, along x = axis 2
  from_csv = peers.read_peer_result(tmp_path / 'a.csv', voxel_size=H)
  np.testing.assert_allclose(from_csv.displacement, disp.reshape(3, -1).T, atol=1e-12)
  np.testing.assert_array_equal(from_csv.positions, field.positions)


def test_tiff_stacks_name_components_like_mbs(tmp_path):
  flow = np.random.default_rng(2).normal(size=(3,) + GRID).astype(np.float32)
  fields = strain.compute(flow, H)
  paths = tiff_stacks.write_stacks(tmp_path, flow, {'green_lagrange': fields['green_lagrange']},
                                   {'volumetric_strain': fields['volumetric_strain']})
  assert len(paths) == 3 + 6 + 1
  dx = tifffile.imread(tmp_path / 'dx.tif')
  assert dx.dtype == np.float32 and dx.shape == GRID
  np.testing.assert_array_equal(dx, flow[2])  # dx = along the image width = array axis 2
  np.testing.assert_array_equal(tifffile.imread(tmp_path / 'green_lagrange_zx.tif'), fields['green_lagrange'][0, 2])


def test_figure_report_is_a_real_picture(tmp_path):
  from matplotlib import image  # pylint: disable=import-outside-toplevel
  x = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (8, 12, 16)], indexing='ij'))
  flow = np.stack([0.1 * x[0], np.sin(x[2] / 3), 0.05 * x[1] * x[2] / 10]).astype(np.float32)
  fields = strain.compute(flow, H)
  path = tmp_path / 'r.png'
  figures.slice_report(path, fields, H, 'um', axis=1, index=3, strain='max_shear_strain')
  assert path.stat().st_size > 20_000
  pixels = image.imread(path)
  assert pixels.ndim == 3 and pixels.shape[0] > 500 and pixels.shape[1] > 1000
  assert pixels[..., :3].std() > 0.1  # not a blank canvas
