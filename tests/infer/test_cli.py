"""FlowEstimator (input checks, one compilation per shape, the tiled path) and the infer.py command line."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import raftdvc_jax
from raftdvc_jax.convert import mapping
from raftdvc_jax.convert import orbax_io
from raftdvc_jax import runtime
from raftdvc_jax.infer import coarse_to_fine
from raftdvc_jax.infer import memory
from raftdvc_jax.infer import tiled
from raftdvc_jax.infer.estimator import FlowEstimator, balanced_batch
from raftdvc_jax.model.config import preset
from raftdvc_jax.model.raft import RAFTDVC

from raftdvc_jax.reference import torch_raft as ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = preset('s4').replace(iters=2)
SIZE = (16, 24, 20)


def torch_variables(config, seed=0):
  """PyTorch's default init through the converter: realistic weights, much faster than a Flax init compile."""
  model = ref.init_weights(ref.build(config.to_dict()), seed)
  return mapping.from_torch({k: v.numpy() for k, v in model.state_dict().items()}, config)


@pytest.fixture(scope='module')
def variables():
  return torch_variables(CONFIG)


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


@pytest.mark.parametrize('vol0, vol1, kwargs, message', [
    (np.zeros((16, 24, 20)), np.zeros((16, 24, 21)), {}, 'vol1: shape'),
    (np.zeros((16, 24)), np.zeros((16, 24)), {}, 'vol0: expected a 3-D volume'),
    (np.zeros((0, 24, 20)), np.zeros((0, 24, 20)), {}, 'vol0: is empty'),
    (np.zeros((16, 24, 20)), np.full((16, 24, 20), np.inf), {}, 'vol1: holds non-finite values .* tile at'),
    (np.zeros((16, 24, 20)), np.zeros((16, 24, 20)), {'tile': 4}, r'tile \(4, 4, 4\) is smaller than the model'),
    (np.zeros((4, 24, 20)), np.zeros((4, 24, 20)), {}, r'volume \(4, 24, 20\) is smaller than the model'),
    (np.zeros((16, 24, 20)), np.zeros((16, 24, 20)), {'blend': 'box'}, 'blend'),
    (np.zeros((16, 24, 20)), np.zeros((16, 24, 20)), {'overlap': 1.0}, 'overlap'),
    (np.zeros((16, 24, 20)), np.zeros((16, 24, 20)), {'batch': 0}, 'batch must be a positive integer'),
    (np.zeros((16, 24, 20)), np.zeros((16, 24, 20)), {'iters': 0}, 'iters must be a positive integer'),
    (np.zeros((16, 24, 20)), np.zeros((16, 24, 20)), {'mask': np.ones((8, 8, 8))}, 'mask: shape'),
])
def test_tiled_rejects_bad_inputs(estimator, vol0, vol1, kwargs, message):
  with pytest.raises(ValueError, match=message):
    estimator.tiled(vol0, vol1, **{'tile': 16, **kwargs})


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


def test_tiled_is_the_runner_over_this_network(estimator, variables, volumes):
  whole = estimator(*volumes)
  # One tile (the volume, or any tile at least its size) is the whole-volume answer, bit for bit.
  for tile in (0, 64, '16,0,20'):
    np.testing.assert_array_equal(estimator.tiled(*volumes, tile=tile, batch=3), whole)
  flow, summary = estimator.tiled(*volumes, tile=16, overlap=0.5, blend='cosine', batch=2, return_summary=True)
  # The same plan through the runner with the network and weights given directly.
  apply = tiled.model_apply_fn(RAFTDVC(CONFIG), iters=2)
  direct = tiled.run_tiled(apply, *volumes, tile=16, overlap=0.5, blend='cosine', batch=2, params=variables,
                           min_size=CONFIG.min_size, progress=False)
  np.testing.assert_allclose(flow, direct, rtol=0, atol=1e-6)
  assert summary['tiles'] == 4 and summary['batch'] == 2 and summary['tile'] == (16, 16, 16)
  assert np.abs(flow - whole).max() > 1e-3  # tiles really ran
  # iters reaches the network: one iteration gives another flow.
  assert np.abs(estimator.tiled(*volumes, tile=16, batch=2, iters=1) - flow).max() > 1e-3
  # A mask skips the tiles without a mask voxel and zeroes the flow outside it.
  mask = np.zeros(SIZE, bool)
  mask[2:6, 1:5, 0:3] = True
  masked, s = estimator.tiled(*volumes, tile=16, overlap=0.5, blend='cosine', batch=2, mask=mask,
                              return_summary=True)
  assert s['tiles'] == 1 and s['tiles_skipped'] == 3
  assert (masked[:, ~mask] == 0).all() and np.abs(masked[:, mask]).max() > 0


def test_tiled_flow_init_reaches_the_network(estimator, volumes):
  grid = lambda tile: tuple(-(-t // CONFIG.stride) for t in tile)
  plain = estimator.tiled(*volumes, tile=16, batch=2)
  zero = estimator.tiled(*volumes, tile=16, batch=2, flow_init_fn=lambda origin, tile: np.zeros((*grid(tile), 3)))
  np.testing.assert_allclose(zero, plain, rtol=0, atol=1e-5)
  coarse = np.ones((3, *SIZE), np.float32)
  started = estimator.tiled(*volumes, tile=16, batch=2, flow_init_fn=coarse_to_fine.flow_init_fn(coarse, 4))
  assert np.abs(started - plain).max() > 0.1


def test_auto_batch_and_a_tile_that_cannot_fit(estimator, variables, volumes, monkeypatch):
  # On CPU the automatic batch is one tile per device (batching measured no gain there).
  _, s = estimator.tiled(*volumes, tile=16, return_summary=True)
  assert s['batch'] == 1
  assert estimator.plan(SIZE, 16, 0.5, batch=5)[1] == 5
  # A 256^3 whole-volume pass of the s4 arm needs ~1 TB with all-pairs and tens of GB with 'local': with a
  # 4 GiB budget it is refused before anything is read, naming a tile that fits.
  monkeypatch.setattr(memory, 'default_budget', lambda: 4 << 30)
  huge = np.broadcast_to(np.float32(0), (256, 256, 256))
  for est in (estimator, FlowEstimator(CONFIG, variables, correlation='allpairs')):
    with pytest.raises(memory.TileTooLargeError, match=r'256x256x256 tile needs .* use --tile \d+ or smaller'):
      est.tiled(huge, huge, tile=0)
  assert [balanced_batch(64, n) for n in (27, 100, 200, 0)] == [27, 50, 50, 1]
  assert balanced_batch(8, 20, devices=2) == 8 and balanced_batch(3, 10) == 3


def test_an_unwritable_compilation_cache_is_skipped(tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  (tmp_path / 'a_file').write_text('x')
  before = jax.config.jax_compilation_cache_dir
  assert runtime.enable_compilation_cache(str(tmp_path / 'a_file' / 'cache')) is None
  assert jax.config.jax_compilation_cache_dir == before


# ---------------------------------------------------------------------------------------------------------
# The command line.


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  # The CLI runs share one persistent compilation cache, kept out of the user's home.
  return str(tmp_path_factory.mktemp('xla_cache'))


def infer_cli(*args, cache=None, wait=True):
  """Runs infer.py (a Popen when wait=False)."""
  env = dict(os.environ, **({} if cache is None else {'RAFTDVC_JAX_CACHE': cache}))
  cmd = [sys.executable, os.path.join(ROOT, 'infer.py'), *args]
  if not wait:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def assert_refused(run, fragment, leftover_dirs=()):
  """One 'error: ...' line, the last on stderr, exit 1, no traceback, no temporary files left."""
  lines = run.stderr.strip().splitlines()
  assert run.returncode == 1, (fragment, run.stderr)
  assert lines and lines[-1].startswith('error: ') and fragment in lines[-1], (fragment, run.stderr)
  assert sum(line.startswith('error') for line in lines) == 1 and 'Traceback' not in run.stderr
  for d in leftover_dirs:
    assert not [n for n in os.listdir(d) if n.startswith('.') and 'tmp' in n], os.listdir(d)


def refuse_all(cases, cache):
  """Runs refusal cases two at a time (most exit before JAX starts); returns the finished runs."""
  runs = []
  for start in range(0, len(cases), 2):
    procs = [infer_cli(*args, cache=cache, wait=False) for args, _ in cases[start:start + 2]]
    for p in procs:
      out, err = p.communicate(timeout=300)
      runs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
  return runs


@pytest.fixture(scope='module')
def converted(tmp_path_factory, variables, volumes):
  root = tmp_path_factory.mktemp('infer')
  ckpt = orbax_io.save(str(root / 'ckpt'), CONFIG, variables, {'kind': 'test'})
  paths = {'ckpt': ckpt}
  mask = np.zeros(SIZE, np.uint8)
  mask[2:6, 1:5, 0:3] = 1  # inside the first of four 16^3 tiles only
  nan_outside = volumes[0].copy()
  nan_outside[:, 17:, :] = np.nan  # only where the mask's one tile does not reach
  arrays = {'vol0': volumes[0], 'vol1': volumes[1], 'small': volumes[0][:4], 'mask': mask,
            'nan': np.where(volumes[0] > 0.99, np.nan, volumes[0]), 'nan_outside': nan_outside,
            'flat': volumes[0][0], 'empty': np.zeros((0, 24, 20), np.float32)}
  for name, vol in arrays.items():
    paths[name] = str(root / f'{name}.npy')
    np.save(paths[name], vol)
  # A 256^3 pair that costs no disk (sparse) and no time until read: too large for a whole-volume pass.
  for name in ('huge0', 'huge1'):
    paths[name] = str(root / f'{name}.npy')
    np.lib.format.open_memmap(paths[name], 'w+', np.float32, (256, 256, 256)).flush()
  paths['garbage'] = str(root / 'garbage.pth')
  with open(paths['garbage'], 'wb') as f:
    f.write(b'\x80\x02not really a pickle')
  paths['unknown'] = str(root / 'vol0.xyz')
  with open(paths['unknown'], 'wb') as f:
    f.write(b'data')
  return root, paths


def test_infer_cli_tiled_masked_run(converted, estimator, volumes, cache_dir):
  root, p = converted
  out = str(root / 'out' / 'flow.tif')  # a folder that does not exist yet is created
  run = infer_cli('--checkpoint', p['ckpt'], '--vol0', p['nan_outside'], '--vol1', p['vol1'], '--output', out,
                  '--tile', '16', '--overlap', '0.5', '--blend', 'cosine', '--batch', '2', '--mask', p['mask'],
                  cache=cache_dir)
  assert run.returncode == 0, run.stderr
  assert 'Traceback' not in run.stderr and f'wrote {out}' in run.stderr
  assert 'tiles: 100%' in run.stderr and '1/1 [' in run.stderr  # tqdm's progress bar
  assert '1 tiles of 16x16x16 (3 skipped by the mask)' in run.stderr and 'voxels/s' in run.stderr  # the summary
  from raftdvc_jax.data import io  # pylint: disable=import-outside-toplevel
  flow = io.read_flow(out, mmap=False)
  assert flow.dtype == np.float32 and flow.shape == (3, *SIZE)
  mask = np.load(p['mask']).astype(bool)
  expect = estimator.tiled(volumes[0], volumes[1], tile=16, overlap=0.5, blend='cosine', batch=2, mask=mask)
  # The CLI process compiles with XLA optimisations and the test process without (conftest): float rounding.
  np.testing.assert_allclose(flow, expect, rtol=0, atol=1e-4)
  assert (flow[:, ~mask] == 0).all() and np.abs(flow[:, mask]).max() > 0
  assert os.listdir(root / 'out') == ['flow.tif']
  assert os.listdir(cache_dir)  # the persistent compilation cache was written


def test_infer_cli_refuses_bad_input(converted, cache_dir):
  root, p = converted
  out = str(root / 'bad_flow.npy')
  with open(root / 'a_file', 'w') as f:
    f.write('x')
  base = ['--checkpoint', p['ckpt'], '--output', out]
  cases = [
      (base + ['--vol0', p['vol0'], '--vol1', p['small']], f'error: {p["small"]}: shape (4, 24, 20) does not match'),
      (base + ['--vol0', p['nan'], '--vol1', p['vol1']], f'error: {p["nan"]}: holds a non-finite value'),
      (base + ['--vol0', p['small'], '--vol1', p['small']], 'volume (4, 24, 20) is too small for this network'),
      (base + ['--vol0', p['flat'], '--vol1', p['flat']], 'expected a 3-D volume (X0, X1, X2), got shape (24, 20)'),
      (base + ['--vol0', p['empty'], '--vol1', p['empty']], f'{p["empty"]}: is empty'),
      (base + ['--vol0', p['vol0'], '--vol1', p['vol1'], '--tile', '4'],
       'tile of the {} arm (4, 4, 4) is too small for this network: every side must be >= 5'.format(p['ckpt'])),
      (base + ['--vol0', p['vol0'], '--vol1', p['vol1'], '--tile', '8,x'], "tile '8,x' is not N or X,Y,Z"),
      (base + ['--vol0', p['vol0'], '--vol1', p['vol1'], '--overlap', '1'], 'overlap must be a fraction in [0, 1)'),
      # All-pairs on a whole 256^3 volume cannot fit (--correlation auto would run it with 'local').
      (base + ['--vol0', p['huge0'], '--vol1', p['huge1'], '--correlation', 'allpairs'], 'tile needs'),
      (base + ['--vol0', p['vol0'], '--vol1', p['vol1'], '--mask', p['small']], 'mask shape (4, 24, 20) does not'),
      (base + ['--vol0', p['nan_outside'], '--vol1', p['vol1'], '--tile', '16', '--mask', p['vol0']],
       f'{p["nan_outside"]}: holds non-finite values (NaN or inf) in the tile at'),
      (base + ['--vol0', p['vol0'], '--vol1', str(root / 'absent.npy')], 'absent.npy: no such file'),
      (base + ['--vol0', p['unknown'], '--vol1', p['vol1']], "unknown format '.xyz'"),
      (['--checkpoint', p['garbage'], '--vol0', p['vol0'], '--vol1', p['vol1'], '--output', out],
       f'error: {p["garbage"]}: '),
      (['--checkpoint', p['ckpt'], '--vol0', p['vol0'], '--vol1', p['vol1'], '--output', str(root / 'f.raw')],
       "cannot write a flow as '.raw'"),
      (['--checkpoint', p['ckpt'], '--vol0', p['vol0'], '--vol1', p['vol1'], '--output',
        str(root / 'a_file' / 'flow.npy')], 'a_file is not a directory'),
      (['--checkpoint', p['ckpt'], '--vol0', p['vol0'], '--vol1', p['vol1'], '--output', p['vol0']],
       '--output would overwrite an input'),
      (['--vol0', p['vol0'], '--vol1', p['vol1'], '--output', out], '--checkpoint is required'),
      (['--checkpoint', p['ckpt'], '--vol0', p['vol0'], '--output', out], 'missing --vol1'),
      (['--demo', '--vol0', p['vol0']], '--demo makes its own volumes; drop --vol0'),
      (['--demo', '--demo_output', str(root / 'demo.jpg')], '--demo_output must be a .png'),
  ]
  for run, (args, fragment) in zip(refuse_all(cases, cache_dir), cases):
    assert_refused(run, fragment, [root])
    assert not os.path.exists(out) and not os.path.exists(root / 'demo.jpg'), args
  np.testing.assert_array_equal(np.load(p['vol0']), np.load(p['vol0']))  # the input is untouched
  assert sorted(os.listdir(root)) == sorted(['ckpt', 'a_file', 'garbage.pth', 'vol0.xyz'] + [
      f'{n}.npy' for n in ('vol0', 'vol1', 'small', 'mask', 'nan', 'nan_outside', 'flat', 'empty', 'huge0',
                           'huge1')] + ['out'] * os.path.isdir(root / 'out'))


def test_infer_cli_help_documents_every_flag():
  run = infer_cli('--help')
  assert run.returncode == 0 and not run.stderr, run.stderr  # absl's own --help exits 1; ours exits 0
  assert run.stdout.startswith('Estimates the displacement field') and 'raftdvc-infer --demo' in run.stdout
  for flag in ('checkpoint', 'vol0', 'vol1', 'output', 'mask', 'data_dir', 'output_dir', 'output_format',
               'strategy', 'iters', 'tile', 'overlap', 'blend', 'batch', 'coarse_checkpoint', 'demo',
               'demo_size', 'demo_output', 'seed', 'progress', 'overwrite', 'refine', 'subset', 'node_step',
               'shape_order', 'search_reach', 'strain', 'voxel_size', 'unit', 'formats', 'figures',
               'correlation', 'lookup'):
    line = next((l for l in run.stdout.splitlines() if l.strip().startswith(f'--{flag}:')
                 or l.strip().startswith(f'--[no]{flag}:')), None)
    assert line is not None and len(line.split(':', 1)[1].strip()) > 3, flag


def test_infer_cli_refine_without_a_network_then_strain(tmp_path, cache_dir):
  """--refine alone (integer search + IC-GN) measures a sub-voxel translation; --strain writes its files."""
  from raftdvc_jax.data import synthetic
  pair = synthetic.make_pair(synthetic.SyntheticConfig(size=36, particle_radius=2.0, density=6.0, disp_min=1.2,
                                                       disp_max=1.8, deformation='translation'), 5)
  np.save(tmp_path / 'a.npy', pair['I1'])
  np.save(tmp_path / 'b.npy', pair['I2'])
  out = str(tmp_path / 'flow.npy')
  args = ('--vol0', str(tmp_path / 'a.npy'), '--vol1', str(tmp_path / 'b.npy'), '--output', out, '--refine',
          '--subset', '12', '--strain', '--voxel_size', '2,1,1', '--unit', 'um', '--formats', 'npz')
  run = infer_cli(*args, cache=cache_dir)
  assert run.returncode == 0, run.stderr
  flow = np.load(out)
  inner = (slice(None),) + (slice(10, -10),) * 3
  epe = np.sqrt(np.square(flow - pair['flow'])[inner].sum(0)).mean()
  assert epe < 0.05, epe  # the no-motion EPE is above 1.2
  nodes = np.load(str(tmp_path / 'flow_nodes.npz'))
  assert nodes['converged'].mean() > 0.9
  strain = np.load(str(tmp_path / 'flow_strain' / 'strain.npz'))
  assert strain['F'].shape == (3, 3, 36, 36, 36)
  # Every output exists now: the same command is refused before any compute, naming the first one.
  assert_refused(infer_cli(*args, cache=cache_dir), 'flow.npy')


def test_random_weights_then_refine_give_the_refinement_only_answer(tmp_path, cache_dir):
  """--checkpoint random --refine on a 12-voxel move: every poor network guess falls back to the search."""
  from tests.refine.test_refine import warped_pair  # pylint: disable=import-outside-toplevel
  shift = np.array([12.3, -11.6, 0.8])
  f, g = warped_pair(lambda x: shift.reshape((3,) + (1,) * (x.ndim - 1)) + 0 * x, seed=5, size=64, pad=16)
  np.save(tmp_path / 'a.npy', f)
  np.save(tmp_path / 'b.npy', g)
  common = ('--vol0', str(tmp_path / 'a.npy'), '--vol1', str(tmp_path / 'b.npy'), '--refine', '--iters', '2')
  alone = infer_cli(*common, '--output', str(tmp_path / 'alone.npy'), cache=cache_dir)
  guided = infer_cli(*common, '--checkpoint', 'random', '--output', str(tmp_path / 'guided.npy'), cache=cache_dir)
  for run in (alone, guided):
    assert run.returncode == 0, run.stderr[-2000:]
  assert 'randomly initialised weights' in guided.stderr
  assert re.search(r'refine: \d+ of \d+ nodes fell back from the given flow', guided.stderr), guided.stderr
  a, b = (np.load(tmp_path / f'{n}_nodes.npz') for n in ('alone', 'guided'))
  np.testing.assert_allclose(b['displacement'], a['displacement'], atol=1e-3)
  inner = np.all(np.abs(a['positions'] - 31.5) < 8, axis=1)  # subsets whose moved copies stay well inside
  epe = np.linalg.norm(a['displacement'][inner] - shift, axis=1)
  assert epe.mean() < 0.02, epe.mean()  # found without being told: no motion would be 17 voxels off
  assert b['fell_back'].mean() > 0.9
