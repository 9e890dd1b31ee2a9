"""FlowEstimator (input checks, one compilation per shape) and the infer.py command line."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import raftdvc_jax
from raftdvc_jax.convert import mapping
from raftdvc_jax.convert import orbax_io
from raftdvc_jax.infer.estimator import FlowEstimator
from raftdvc_jax.model.config import preset

try:
  from tests import torch_reference as ref
except ImportError:
  import torch_reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = preset('s4').replace(iters=2)
SIZE = (16, 24, 20)


@pytest.fixture(scope='module')
def variables():
  # PyTorch's default init through the converter: realistic weights, and much faster than a Flax init compile.
  model = ref.init_weights(ref.build(CONFIG.to_dict()), 0)
  return mapping.from_torch({k: v.numpy() for k, v in model.state_dict().items()}, CONFIG)


@pytest.fixture(scope='module')
def estimator(variables):
  return FlowEstimator(CONFIG, variables)


@pytest.fixture(scope='module')
def volumes():
  rng = np.random.default_rng(0)
  vol0 = rng.random(SIZE).astype(np.float32)
  return vol0, np.roll(vol0, 1, axis=0)


@pytest.mark.parametrize('vol0, vol1, message', [
    (np.zeros((16, 24, 20)), np.zeros((16, 24, 21)), 'differ in shape'),
    (np.zeros((16, 24)), np.zeros((16, 24)), 'must be a 3-D volume'),
    (np.zeros((4, 24, 20)), np.zeros((4, 24, 20)), 'too small for this network: every side must be >= 5'),
    (np.full((16, 24, 20), np.nan), np.zeros((16, 24, 20)), 'vol0 holds non-finite values'),
    (np.zeros((16, 24, 20), bool), np.array([['a']]), 'vol1 must be a 3-D volume'),
])
def test_estimator_rejects_bad_inputs(estimator, vol0, vol1, message):
  with pytest.raises(ValueError, match=message):
    estimator(vol0, vol1)


def test_estimator_rejects_bad_iters(estimator, volumes):
  for iters in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match='iters must be a positive integer'):
      estimator(*volumes, iters=iters)


def test_estimator_compiles_once_per_shape(estimator, variables, volumes):
  first = estimator(*volumes)
  assert first.shape == (3, *SIZE) and first.dtype == np.float32 and np.isfinite(first).all()
  assert np.abs(first).max() > 0
  again = estimator(volumes[0].astype(np.float64), volumes[1])  # other dtypes are cast, not retraced
  np.testing.assert_array_equal(first, again)
  # A second estimator with the same network (and another default iters) reuses the compiled function.
  other = FlowEstimator(CONFIG.replace(iters=7), variables)
  np.testing.assert_array_equal(other(*volumes, iters=2), first)
  assert estimator.traces(SIZE) == 1
  assert estimator.config == CONFIG and set(estimator.params) == set(variables['params'])
  assert raftdvc_jax.FlowEstimator is FlowEstimator


def _infer(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'infer.py'), *args], capture_output=True, text=True,
                        cwd=ROOT, timeout=300)


@pytest.fixture(scope='module')
def converted(tmp_path_factory, variables, volumes):
  root = tmp_path_factory.mktemp('infer')
  ckpt = orbax_io.save(str(root / 'ckpt'), CONFIG, variables, {'kind': 'test'})
  paths = {'ckpt': ckpt}
  for name, vol in (('vol0', volumes[0]), ('vol1', volumes[1]), ('small', volumes[0][:4]),
                    ('nan', np.where(volumes[0] > 0.99, np.nan, volumes[0]))):
    paths[name] = str(root / f'{name}.npy')
    np.save(paths[name], vol)
  paths['garbage'] = str(root / 'garbage.pth')
  with open(paths['garbage'], 'wb') as f:
    f.write(b'\x80\x02not really a pickle')
  return root, paths


def test_infer_cli_whole_volume(converted, estimator, volumes):
  root, p = converted
  out = str(root / 'flow.npy')
  run = _infer('--checkpoint', p['ckpt'], '--vol0', p['vol0'], '--vol1', p['vol1'], '--output', out)
  assert run.returncode == 0, run.stderr
  assert 'wrote' in run.stderr and 'Traceback' not in run.stderr
  flow = np.load(out)
  assert flow.dtype == np.float32 and flow.shape == (3, *SIZE)
  # The CLI process compiles with XLA optimisations and the test process without (conftest): float rounding.
  np.testing.assert_allclose(flow, estimator(*volumes), rtol=0, atol=1e-4)
  assert sorted(os.listdir(root)) == sorted(['ckpt', 'flow.npy', 'vol0.npy', 'vol1.npy', 'small.npy', 'nan.npy',
                                             'garbage.pth'])


def test_infer_cli_refuses_bad_input(converted):
  root, p = converted
  out = str(root / 'bad_flow.npy')
  cases = [
      (['--vol0', p['vol0'], '--vol1', p['small']], f'error: {p["small"]}: shape (4, 24, 20) does not match'),
      (['--vol0', p['nan'], '--vol1', p['vol1']], f'error: {p["nan"]}: holds a non-finite value'),
      (['--vol0', p['small'], '--vol1', p['small']], 'too small for this network'),
      (['--vol0', p['vol0'], '--vol1', p['vol1'], '--tile', '8'], 'tiled inference is not available'),
      (['--vol0', p['vol0'], '--vol1', str(root / 'absent.npy')], 'absent.npy: no such file'),
  ]
  for args, fragment in cases:
    run = _infer('--checkpoint', p['ckpt'], '--output', out, *args)
    assert run.returncode == 1, (args, run.stderr)
    assert fragment in run.stderr.strip().splitlines()[-1], (args, run.stderr)
    assert 'Traceback' not in run.stderr and not os.path.exists(out)
  run = _infer('--checkpoint', p['garbage'], '--vol0', p['vol0'], '--vol1', p['vol1'], '--output', out)
  assert run.returncode == 1 and f'error: {p["garbage"]}: ' in run.stderr and not os.path.exists(out)
  run = _infer('--checkpoint', p['ckpt'], '--vol0', p['vol0'], '--vol1', p['vol1'], '--output', str(root / 'f.raw'))
  assert run.returncode == 1 and "cannot write a flow as '.raw'" in run.stderr
