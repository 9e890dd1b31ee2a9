"""raftdvc-make-dataset end to end: layout, keys, determinism, errors."""

import json
import os
import subprocess
import sys

import numpy as np

from raftdvc_jax.data import datasets
from raftdvc_jax.data import synthetic
from tests.scripts import script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))



def run_tool(*args):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.run([script('raftdvc-make-dataset'), *args], capture_output=True, text=True, env=env, timeout=120)


ARGS = ['--num_samples', '3', '--size', '16', '--particle_radius', '2', '--density', '4.8', '--disp_min', '1',
        '--disp_max', '2', '--deformation', 'quadratic', '--noise=false', '--seed', '7', '--split', 'train']


def test_writes_raftdvc_layout_deterministically(tmp_path):
  first = run_tool('--output', str(tmp_path / 'a'), *ARGS)
  assert first.returncode == 0, first.stderr
  assert '3/3' in first.stderr  # the progress bar
  files = sorted(os.listdir(tmp_path / 'a' / 'train'))
  assert files == ['sample_00000.npz', 'sample_00001.npz', 'sample_00002.npz']
  for name in files:
    with np.load(tmp_path / 'a' / 'train' / name, allow_pickle=False) as z:
      assert sorted(z.files) == ['I1', 'I2', 'flow', 'metadata']
      assert z['I1'].shape == z['I2'].shape == (16, 16, 16) and z['flow'].shape == (3, 16, 16, 16)
      assert {z[k].dtype for k in ('I1', 'I2', 'flow')} == {np.dtype(np.float32)}
      meta = json.loads(str(z['metadata']))
      assert meta['deformation'] == 'quadratic' and meta['split'] == 'train' and not meta['config']['noise']
      assert 1 - 1e-5 <= np.abs(z['flow']).max() <= 2 + 1e-5
  # Same arguments, same bytes; and the files are the on-the-fly stream of the same seed.
  second = run_tool('--output', str(tmp_path / 'b'), *ARGS)
  assert second.returncode == 0, second.stderr
  for name in files:
    assert (tmp_path / 'a' / 'train' / name).read_bytes() == (tmp_path / 'b' / 'train' / name).read_bytes()
  config = synthetic.SyntheticConfig(size=16, particle_radius=2, density=4.8, disp_min=1, disp_max=2,
                                     deformation='quadratic', noise=False)
  stream = datasets.SyntheticDataset(config, seed=meta['seed'][:2])
  np.testing.assert_array_equal(stream[2]['vol1'], np.load(tmp_path / 'a' / 'train' / files[2])['I2'])
  # Another split with the same seed is different data.
  other = run_tool('--output', str(tmp_path / 'a'), *ARGS[:-1], 'val')
  assert other.returncode == 0, other.stderr
  assert (tmp_path / 'a' / 'val' / files[0]).read_bytes() != (tmp_path / 'a' / 'train' / files[0]).read_bytes()


def test_preset_and_overrides(tmp_path):
  result = run_tool('--output', str(tmp_path), '--num_samples', '1', '--preset', 'r2_32', '--size', '16',
                    '--noise=false')
  assert result.returncode == 0, result.stderr
  meta = json.loads(str(np.load(tmp_path / 'sample_00000.npz')['metadata']))
  assert meta['config']['size'] == 16 and meta['config']['particle_radius'] == 2.0
  assert meta['config']['deformation'] == synthetic.RAFTDVC_MIX


def test_user_errors_are_one_line_without_traceback(tmp_path):
  for bad in (['--disp_min', '5', '--disp_max', '2'], ['--deformation', 'shear']):
    result = run_tool('--output', str(tmp_path), '--num_samples', '1', *bad)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:'), result.stderr
    assert 'Traceback' not in result.stderr


def test_help():
  result = run_tool('--help')
  assert result.returncode == 0, result.stderr
  assert 'Traceback' not in result.stderr
  assert '--deformation' in result.stdout and '--num_samples' in result.stdout


def test_existing_samples_are_kept_unless_overwrite(tmp_path):
  args = ['--output', str(tmp_path), '--num_samples', '2', '--size', '16', '--noise=false']
  assert run_tool(*args).returncode == 0
  before = (tmp_path / 'sample_00000.npz').read_bytes()
  again = run_tool(*args[:-1], '--seed', '5')
  assert again.returncode == 1 and again.stderr.strip().splitlines() == [
      f'error: {tmp_path / "sample_00000.npz"}: exists (2 of the 2 samples do); pass --overwrite to replace them or '
      '--skip_existing to keep them']
  assert (tmp_path / 'sample_00000.npz').read_bytes() == before
  assert run_tool(*args[:-1], '--seed', '5', '--overwrite').returncode == 0
  assert (tmp_path / 'sample_00000.npz').read_bytes() != before


def test_a_displacement_beyond_a_quarter_of_the_volume_warns(tmp_path):
  result = run_tool('--output', str(tmp_path), '--num_samples', '1', '--size', '16', '--disp_min', '4',
                    '--disp_max', '5')
  assert result.returncode == 0 and 'exceeds a quarter of the 16-voxel volume' in result.stderr
