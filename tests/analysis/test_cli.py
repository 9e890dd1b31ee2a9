"""raftdvc-analyze end to end: the fixed command form, the files it writes, one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import vtk
from vtk.util import numpy_support

from raftdvc_jax.analysis import spam_tsv
from tests.scripts import script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GRID = (10, 12, 14)


def run_tool(*args):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
             JAX_DISABLE_MOST_OPTIMIZATIONS='1')  # tiny volumes: XLA's passes cost more than they save
  return subprocess.run([script('raftdvc-analyze'), *map(str, args)], capture_output=True, text=True, env=env,
                        timeout=300)


def one_line_error(result, *fragments):
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


def test_round_trip_writes_every_format(tmp_path):
  x = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in GRID], indexing='ij'))
  flow = np.stack([0.02 * x[0], -0.01 * x[1], 0.03 * x[2]]).astype(np.float32)  # stretch, voxels
  np.save(tmp_path / 'flow.npy', flow)
  mask = np.ones(GRID, np.uint8)
  mask[:, :, :3] = 0
  np.save(tmp_path / 'mask.npy', mask)
  out = tmp_path / 'out'
  result = run_tool('--flow', tmp_path / 'flow.npy', '--output', out, '--voxel_size', '2,1,0.5', '--unit', 'um',
                    '--formats', 'vti,npz,tsv,tif,aldvc,csv', '--figures', '--mask', tmp_path / 'mask.npy',
                    '--node_spacing', '4')
  assert result.returncode == 0, result.stderr
  names = sorted(os.listdir(out))
  assert names == ['aldvc.csv', 'aldvc.npz', 'metadata.json', 'report.png', 'spam.tsv', 'strain.npz',
                   'strain.vti', 'tif']
  with np.load(out / 'strain.npz', allow_pickle=False) as z:
    for name in ('F', 'green_lagrange', 'small_strain'):
      assert z[name].shape == (3, 3) + GRID and z[name].dtype == np.float32
    inside = mask.astype(bool)
    # Strain is dimensionless: the stretch 0.02 voxel/voxel is 0.02 whatever the voxel size.
    np.testing.assert_allclose(z['small_strain'][0, 0][inside], 0.02, atol=1e-6)
    np.testing.assert_allclose(z['small_strain'][2, 2][inside], 0.03, atol=1e-6)
    assert np.isnan(z['F'][:, :, ~inside]).all()
    np.testing.assert_allclose(z['volumetric_strain'][inside], 1.02 * 0.99 * 1.03 - 1, atol=1e-6)
    np.testing.assert_allclose(z['displacement'][0][inside], (2.0 * flow[0])[inside], atol=1e-6)  # um
    meta = json.loads(str(z['metadata']))
    np.testing.assert_array_equal(z['voxel_size'], [2.0, 1.0, 0.5])
  assert meta['voxel_size'] == [2.0, 1.0, 0.5] and meta['unit'] == 'um'
  assert 'array axes' in meta['component_order'] and 'reference -> deformed' in meta['flow_sign']
  assert meta['provenance']['flow'].endswith('flow.npy')
  assert json.loads((out / 'metadata.json').read_text())['voxel_size'] == [2.0, 1.0, 0.5]
  reader = vtk.vtkXMLImageDataReader()
  reader.SetFileName(str(out / 'strain.vti'))
  reader.Update()
  image = reader.GetOutput()
  assert image.GetDimensions() == (14, 12, 10) and image.GetSpacing() == (0.5, 1.0, 2.0)
  disp = numpy_support.vtk_to_numpy(image.GetPointData().GetArray('displacement'))
  point = image.ComputePointId([5, 4, 3])  # array index (3, 4, 5)
  np.testing.assert_allclose(disp[point], [0.03 * 5 * 0.5, -0.01 * 4 * 1.0, 0.02 * 3 * 2.0], atol=1e-6)
  assert image.GetPointData().GetArray('von_mises_strain') is not None
  nodes = spam_tsv.read_spam_tsv(out / 'spam.tsv')
  assert np.nanmax(nodes.endpoint_errors(flow)) < 1e-5 and not nodes.valid.all()
  assert (out / 'report.png').stat().st_size > 20_000
  assert not [n for n in os.listdir(out) if n.startswith('.')]  # no scratch left behind

  # The same output again needs --overwrite; with it, the run replaces the results.
  again = run_tool('--flow', tmp_path / 'flow.npy', '--output', out)
  one_line_error(again, 'strain.npz exists', '--overwrite')
  replaced = run_tool('--flow', tmp_path / 'flow.npy', '--output', out, '--overwrite')
  assert replaced.returncode == 0, replaced.stderr
  assert json.loads((out / 'metadata.json').read_text())['voxel_size'] == [1.0, 1.0, 1.0]


def test_user_mistakes_are_one_line(tmp_path):
  flow = np.zeros((3,) + GRID, np.float32)
  np.save(tmp_path / 'flow.npy', flow)
  one_line_error(run_tool('--flow', tmp_path / 'nope.npy', '--output', tmp_path / 'o'), 'nope.npy',
                 'no such file')
  for bad in ('1,2', 'a,b,c', '1,0,1', '-1'):
    one_line_error(run_tool('--flow', tmp_path / 'flow.npy', '--output', tmp_path / 'o', '--voxel_size', bad),
                   '--voxel_size')
  one_line_error(run_tool('--flow', tmp_path / 'flow.npy', '--output', tmp_path / 'o', '--formats', 'vti,obj'),
                 'obj')
  np.save(tmp_path / 'mask.npy', np.ones((4, 4, 4)))
  one_line_error(run_tool('--flow', tmp_path / 'flow.npy', '--output', tmp_path / 'o', '--mask',
                          tmp_path / 'mask.npy'), 'mask.npy', 'does not match')
  assert not os.path.exists(tmp_path / 'o') or not os.listdir(tmp_path / 'o')  # nothing half-written
  help_result = run_tool('--help')
  assert help_result.returncode == 0 and '--voxel_size' in help_result.stdout
