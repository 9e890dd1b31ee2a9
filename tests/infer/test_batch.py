"""infer.py batch mode (folders of pairs), coarse-to-fine from the command line, and --demo end to end."""

import os

import numpy as np
import pytest
import tifffile

from raftdvc_jax.convert import orbax_io
from raftdvc_jax.data import io
from raftdvc_jax.infer import coarse_to_fine
from raftdvc_jax.infer.estimator import FlowEstimator
from raftdvc_jax.model.config import preset

from tests.infer.test_cli import assert_refused, infer_cli, refuse_all, torch_variables

FINE = preset('s4').replace(iters=2)
COARSE = preset('s8').replace(iters=2)


@pytest.fixture(scope='module')
def arms(tmp_path_factory):
  """(fine, coarse) estimators and their converted checkpoint directories."""
  root = tmp_path_factory.mktemp('arms')
  out = {}
  for name, config, seed in (('fine', FINE, 0), ('coarse', COARSE, 1)):
    variables = torch_variables(config, seed)
    out[name] = (FlowEstimator(config, variables), orbax_io.save(str(root / name), config, variables))
  return out


def bead_pair(shape, seed):
  rng = np.random.default_rng(seed)
  vol0 = rng.random(shape).astype(np.float32)
  return vol0, np.roll(vol0, (1, 0, -1), axis=(0, 1, 2))


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('xla_cache'))


def test_batch_over_vol0_vol1_folders(tmp_path, arms, cache_dir):
  est, ckpt = arms['fine']
  data = tmp_path / 'data'
  pairs = {'a': bead_pair((16, 24, 20), 0), 'b': bead_pair((16, 24, 20), 1)}
  for sub in ('vol0', 'vol1'):
    os.makedirs(data / sub)
  np.save(data / 'vol0' / 'a.npy', pairs['a'][0])
  np.save(data / 'vol1' / 'a.npy', pairs['a'][1])
  tifffile.imwrite(data / 'vol0' / 'b.tif', pairs['b'][0])  # formats may differ between pairs and volumes
  os.makedirs(data / 'vol1' / 'b')  # a folder of 2-D slices
  for i, plane in enumerate(pairs['b'][1]):
    tifffile.imwrite(data / 'vol1' / 'b' / f'slice_{i:03d}.tif', plane)
  out = tmp_path / 'flows'
  run = infer_cli('--checkpoint', ckpt, '--data_dir', str(data), '--output_dir', str(out), '--output_format', 'npz',
                  cache=cache_dir)
  assert run.returncode == 0, run.stderr
  assert 'Traceback' not in run.stderr
  assert sorted(os.listdir(out)) == ['a_flow.npz', 'b_flow.npz']
  # One line per pair, then a closing summary.
  assert f'[1/2] a: 7,680 voxels, 1 tiles' in run.stderr and f'-> {out / "b_flow.npz"}' in run.stderr
  assert '2 pairs, 15,360 voxels, 2 tiles' in run.stderr and 'voxels/s' in run.stderr
  for name, (vol0, vol1) in pairs.items():
    flow = io.read_flow(out / f'{name}_flow.npz', mmap=False)
    # The CLI process compiles with XLA optimisations and the test process without (conftest): float rounding.
    np.testing.assert_allclose(flow, est(vol0, vol1), rtol=0, atol=1e-4)


def test_batch_of_pair_files_with_coarse_to_fine(tmp_path, arms, cache_dir):
  fine, fine_ckpt = arms['fine']
  coarse, coarse_ckpt = arms['coarse']
  data = tmp_path / 'data'
  os.makedirs(data)
  p = bead_pair((20, 18, 24), 2)
  np.save(data / 'p_vol0.npy', p[0])
  np.save(data / 'p_vol1.npy', p[1])
  q = bead_pair((18, 18, 18), 3)
  np.savez(data / 'q.npz', I1=q[0], I2=q[1], flow=np.zeros((3, 18, 18, 18), np.float32))  # a RAFT-DVC sample
  (data / 'notes.txt').write_text('not a volume: ignored')
  np.save(data / 'earlier_flow.npy', np.zeros((3, 18, 18, 18), np.float32))  # a previous run's result: ignored
  os.makedirs(data / 'old_results')  # a folder not named as a slice stack of a pair: ignored
  out = tmp_path / 'flows'
  run = infer_cli('--checkpoint', fine_ckpt, '--coarse_checkpoint', coarse_ckpt, '--data_dir', str(data),
                  '--output_dir', str(out), '--tile', '16', '--overlap', '0.25', '--strategy', 'fast', '--iters', '2',
                  cache=cache_dir)
  assert run.returncode == 0, run.stderr
  assert 'coarse-to-fine' in run.stderr and '2 iterations' in run.stderr
  assert sorted(os.listdir(out)) == ['p_flow.npy', 'q_flow.npy']
  for name, (vol0, vol1) in (('p', p), ('q', q)):
    # fast = cosine blend; --iters overrides its 8 iterations; both arms run the same tiles.
    kw = dict(tile=16, overlap=0.25, blend='cosine', iters=2)
    first = coarse.tiled(vol0, vol1, **kw)
    expect = fine.tiled(vol0, vol1, flow_init_fn=coarse_to_fine.flow_init_fn(first, fine.config.stride), **kw)
    flow = np.load(out / f'{name}_flow.npy')
    np.testing.assert_allclose(flow, expect, rtol=0, atol=1e-4)
    assert np.abs(flow - fine.tiled(vol0, vol1, **kw)).max() > 1e-3  # the coarse flow did start the fine arm


def test_batch_refusals(tmp_path, arms, cache_dir):
  _, ckpt = arms['fine']
  vol = bead_pair((16, 16, 16), 4)[0]

  def folder(name, files):
    d = tmp_path / name
    os.makedirs(d)
    for rel, array in files.items():
      os.makedirs((d / rel).parent, exist_ok=True)
      np.save(d / rel, array)
    return str(d)

  empty = folder('empty', {})
  unmatched = folder('unmatched', {'vol0/a.npy': vol, 'vol1/a.npy': vol, 'vol0/b.npy': vol})
  flat = folder('flat', {'a_vol0.npy': vol, 'a_vol1.npy': vol, 'stray.npy': vol})
  bad = np.where(vol > 0.9, np.nan, vol)
  # Pair 'a' cannot be estimated; 'z' does not match its partner: found before anything is estimated.
  late = folder('late', {'vol0/a.npy': bad, 'vol1/a.npy': vol, 'vol0/z.npy': vol, 'vol1/z.npy': vol[:8]})
  nan_first = folder('nan_first', {'vol0/a.npy': bad, 'vol1/a.npy': vol, 'vol0/b.npy': vol, 'vol1/b.npy': vol})
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  out = tmp_path / 'flows'
  cases = [
      ([empty], 'no pairs found'),
      ([unmatched], f'{unmatched}/vol1/b.npy: missing, but {unmatched}/vol0/b.npy is there'),
      ([flat], 'stray.npy: not part of a pair'),
      ([late], 'z.npy: shape (8, 16, 16) does not match'),
      ([nan_first], f"pair 'a': {nan_first}/vol0/a.npy: holds a non-finite value"),
  ]
  cases = [(['--checkpoint', ckpt, '--data_dir', d, '--output_dir', str(out)], m) for (d,), m in cases]
  cases += [
      (['--checkpoint', ckpt, '--data_dir', unmatched, '--output_dir', str(a_file)],
       'the --output_dir is not a directory'),
      (['--checkpoint', ckpt, '--data_dir', unmatched, '--output_dir', str(a_file / 'flows')],
       f'cannot write the --output_dir: {a_file} is not a directory'),
      (['--checkpoint', ckpt, '--data_dir', str(a_file), '--output_dir', str(out)], '--data_dir is not a directory'),
      (['--checkpoint', ckpt, '--data_dir', unmatched], 'batch mode needs --output_dir'),
      (['--checkpoint', ckpt, '--data_dir', unmatched, '--output_dir', str(out), '--mask', str(a_file)],
       'in batch mode put masks in DATA_DIR/mask/'),
  ]
  for run, (_, fragment) in zip(refuse_all(cases, cache_dir), cases):
    assert_refused(run, fragment)
    assert not os.path.exists(out) or not os.listdir(out), os.listdir(out)
