"""infer.py and its library never lose a result or fail after the compute: existing outputs, missing writers,
special paths, and inputs that are legal but probably a mistake."""

import logging
import os

import numpy as np
import pytest

from raftdvc_jax.data import pairs as pairs_lib
from raftdvc_jax.infer import pipeline

from tests.infer.test_cli import CONFIG, ROOT, SIZE, assert_refused, infer_cli, refuse_all, torch_variables


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  from raftdvc_jax.convert import orbax_io  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp('outputs')
  rng = np.random.default_rng(0)
  vol0 = rng.random(SIZE).astype(np.float32)
  paths = {'ckpt': orbax_io.save(str(root / 'ckpt'), CONFIG, torch_variables(CONFIG))}
  for name, vol in {'vol0': vol0, 'vol1': np.roll(vol0, 1, axis=0)}.items():
    paths[name] = str(root / f'{name}.npy')
    np.save(paths[name], vol)
  pairs = root / 'pairs'
  for sub in ('vol0', 'vol1'):
    os.makedirs(pairs / sub)
    for name in ('a', 'b'):
      np.save(pairs / sub / f'{name}.npy', np.load(paths[sub]))
  paths['pairs'] = str(pairs)
  # A module named h5py that fails to import stands for an environment without h5py.
  no_h5py = root / 'no_h5py'
  no_h5py.mkdir()
  (no_h5py / 'h5py.py').write_text('raise ImportError("No module named h5py")\n')
  paths['no_h5py'] = str(no_h5py)
  return root, paths


def test_existing_outputs_are_refused_before_any_compute(setup):
  root, p = setup
  existing = root / 'flow.npy'
  np.save(existing, np.full((3, *SIZE), 7.0, np.float32))
  flows = root / 'flows'
  flows.mkdir()
  np.save(flows / 'b_flow.npy', np.ones(3, np.float32))
  base = ['--checkpoint', p['ckpt'], '--vol0', p['vol0'], '--vol1', p['vol1']]
  cases = [
      (base + ['--output', str(existing)], f'{existing}: the flow file exists; pass --overwrite to replace it'),
      (['--checkpoint', p['ckpt'], '--data_dir', p['pairs'], '--output_dir', str(flows)],
       f'{flows / "b_flow.npy"}: the flow file exists; pass --overwrite'),
      (base + ['--output', '/dev/full'], '/dev/full: the flow file is not a regular file'),
  ]
  for run, (args, fragment) in zip(refuse_all(cases, None), cases):
    assert_refused(run, fragment, [root])
    assert 'fine arm' not in run.stderr, args  # refused before the checkpoint was even loaded
  assert (np.load(existing) == 7).all() and sorted(os.listdir(flows)) == ['b_flow.npy']


def test_h5_output_without_h5py_is_refused_up_front(setup):
  root, p = setup
  env = dict(os.environ, PYTHONPATH=p['no_h5py'] + os.pathsep + os.environ.get('PYTHONPATH', ''))
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  run = subprocess.run([sys.executable, os.path.join(ROOT, 'infer.py'),
                        '--checkpoint', p['ckpt'], '--vol0', p['vol0'], '--vol1', p['vol1'], '--output',
                        str(root / 'flow.h5')], capture_output=True, text=True, env=env, timeout=300)
  assert_refused(run, f'{root / "flow.h5"}: writing .h5 needs h5py')
  assert not os.path.exists(root / 'flow.h5')


def test_overwrite_replaces_the_flow(setup):
  root, p = setup
  out = root / 'again.npy'
  np.save(out, np.zeros(3, np.float32))
  run = infer_cli('--checkpoint', p['ckpt'], '--vol0', p['vol0'], '--vol1', p['vol1'], '--output', str(out),
                  '--overwrite', '--progress=false')
  assert run.returncode == 0, run.stderr
  assert np.load(out).shape == (3, *SIZE)
  # What a user sees: the arm, the settings, one result line; no library INFO flood.
  lines = run.stderr.strip().splitlines()
  assert len(lines) <= 4 and lines[-1].startswith(f'wrote {out}'), run.stderr


class _Fine:
  """The parts of a FlowEstimator that Pipeline.check uses."""

  config = CONFIG

  def plan(self, shape, tile, overlap, mask, batch):
    from raftdvc_jax.infer import tiling  # pylint: disable=import-outside-toplevel
    return tiling.plan_tiles(shape, tile, overlap, CONFIG.min_size), 1


def test_suspicious_inputs_warn(caplog):
  rng = np.random.default_rng(0)
  vol = rng.random((16, 16, 16)).astype(np.float32)
  with caplog.at_level(logging.WARNING, logger='raftdvc_jax'):
    assert pipeline.warn_if_suspicious(vol, vol * 0.5 + 0.1, 'pair') == []
    notes = pipeline.warn_if_suspicious(np.full_like(vol, 3.0), vol, 'pair')
    assert len(notes) == 1 and 'vol0 looks constant' in notes[0]
    notes = pipeline.warn_if_suspicious(vol, (vol * 1000).astype(np.uint16), 'pair')
    assert any('different dtypes' in n for n in notes) and any('differ more than 10x' in n for n in notes)
    pipe = pipeline.Pipeline(_Fine(), tile=8, overlap=0.5)
    pipe.check((100, 100, 100), 'big')  # 8^3 tiles every 4 voxels: 24^3 = 13,824 tiles
  assert 'tiles for the fine arm' in caplog.text and 'looks constant' in caplog.text


def test_pair_discovery_is_shared_by_inference_and_training(tmp_path):
  from raftdvc_jax.data import datasets  # pylint: disable=import-outside-toplevel
  vol = np.zeros((8, 8, 8), np.float32)
  flow = np.zeros((3, 8, 8, 8), np.float32)
  for name in ('a', 'b'):
    np.save(tmp_path / f'{name}_vol0.npy', vol)
    np.save(tmp_path / f'{name}_vol1.npy', vol)
    np.save(tmp_path / f'{name}_flow.npy', flow)
  found = pairs_lib.find_pairs(tmp_path)  # inference: the _flow files are earlier results
  assert [p.name for p in found] == ['a', 'b'] and set(found[0].sources) == {'vol0', 'vol1'}
  ds = datasets.PairDirectoryDataset(tmp_path)  # training: the same rule, flow as a third role
  assert ds.names == ['a', 'b'] and ds[1]['flow'].shape == (3, 8, 8, 8)
  os.remove(tmp_path / 'b_flow.npy')
  with pytest.raises(ValueError, match=f'{tmp_path / "b_flow.npy"}: missing, but'):
    datasets.PairDirectoryDataset(tmp_path)
