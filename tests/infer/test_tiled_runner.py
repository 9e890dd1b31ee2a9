"""The tiled runner: exact stitching of a position-aware stand-in, one compile, masks, devices, refusals,
the real model (one tile == the whole-volume forward), the memory estimator and the demo."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raftdvc_jax.infer import demo
from raftdvc_jax.infer import memory
from raftdvc_jax.infer import tiled
from raftdvc_jax.infer import tiling
from raftdvc_jax.model.config import preset
from raftdvc_jax.model.raft import RAFTDVC

BASE = 64  # the stand-in volumes encode a voxel's global index as x0 + 64 x1 + 64^2 x2 (exact in float32)


def encoded_volume(shape):
  g = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing='ij'))
  return (g[0] + BASE * g[1] + BASE**2 * g[2]).astype(np.float32), g.astype(np.float32)


def field(x0, x1, x2, lib=np):
  """An analytic flow of global position, (3, ...) stacked on `axis`."""
  return [lib.sin(0.3 * x0) + 0.01 * x1, 0.05 * x2 - 0.02 * x0 + 0.1, 2.0 * lib.cos(0.2 * x1) * x0 / 10.0]


TRACES = {'count': 0}


def stand_in(vol0, vol1):
  """A model whose flow is field(global position), decoded from vol0; vol1 - vol0 is added to channel 0."""
  TRACES['count'] += 1
  c = jnp.round(vol0).astype(jnp.int32)
  x = [(c % BASE).astype(jnp.float32), ((c // BASE) % BASE).astype(jnp.float32),
       (c // BASE**2).astype(jnp.float32)]
  f = field(*x, lib=jnp)
  f[0] = f[0] + (vol1 - vol0)
  return jnp.stack(f, -1)


@pytest.fixture(scope='module')
def volume():
  return encoded_volume((37, 29, 45))  # no side a multiple of the tile


@pytest.mark.parametrize('blend', tiling.BLENDS)
@pytest.mark.parametrize('overlap', [0.0, 0.25, 0.5, 0.75])
def test_stitches_position_dependent_flow_exactly(volume, blend, overlap):
  vol, g = volume
  flow, summary = tiled.run_tiled(stand_in, vol, vol + 0.0, tile=16, overlap=overlap, blend=blend, batch=3,
                                  progress=False, return_summary=True)
  assert flow.shape == (3, 37, 29, 45) and flow.dtype == np.float32
  truth = np.stack(field(*g))
  np.testing.assert_allclose(flow, truth, atol=1e-5, rtol=1e-5)
  plan = tiling.plan_tiles(vol.shape, 16, overlap)
  assert summary['tiles'] == plan.num_tiles and summary['voxels'] == vol.size
  assert summary['batches'] == -(-plan.num_tiles // 3) and summary['voxels_per_second'] > 0


def test_pairs_stay_paired_and_anisotropic_tiles(volume):
  vol, g = volume
  offset = np.random.default_rng(0).uniform(0, 0.4, vol.shape).astype(np.float32)  # rounds away in decoding
  vol1 = vol + offset
  flow = tiled.run_tiled(stand_in, vol, vol1, tile='12,20,0', overlap=0.4, blend='gaussian', batch=2,
                         progress=False)
  truth = np.stack(field(*g))
  truth[0] += vol1 - vol  # the offset as float32 keeps it at these magnitudes
  assert np.abs(vol1 - vol).max() > 0.3
  np.testing.assert_allclose(flow, truth, atol=1e-5, rtol=1e-5)


def test_compiles_once_per_tile_shape(volume):
  vol, _ = volume
  fn = lambda a, b: stand_in(a, b)  # a fresh function: nothing cached for it yet
  before = TRACES['count']
  for _ in range(2):  # 7 tiles in batches of 3: a short last batch, padded, and a second call
    tiled.run_tiled(fn, vol, vol, tile=(37, 16, 16), overlap=0.5, batch=3, progress=False)
  assert TRACES['count'] - before == 1
  tiled.run_tiled(fn, vol, vol, tile=(37, 16, 20), overlap=0.5, batch=3, progress=False)
  assert TRACES['count'] - before == 2  # a new tile shape compiles again


def test_one_tile_is_the_whole_volume_answer(volume):
  vol, _ = volume
  whole = np.moveaxis(np.asarray(jax.jit(stand_in)(vol[None], vol[None])[0]), -1, 0)
  flow, summary = tiled.run_tiled(stand_in, vol, vol, tile=64, batch=4, progress=False, return_summary=True)
  assert summary['tiles'] == 1 and summary['batch'] == 1 and summary['tile'] == vol.shape
  np.testing.assert_array_equal(flow, whole)


def test_mask_skips_tiles_and_zeroes_flow_outside(volume):
  vol, g = volume
  vol0 = vol.copy()
  vol0[30:, :, 30:] = np.nan  # only in tiles the mask excludes: reading them would be refused
  mask = np.zeros(vol.shape, bool)
  mask[2:10, 5:9, 3:12] = True
  flow, summary = tiled.run_tiled(stand_in, vol0, vol, tile=16, overlap=0.0, batch=2, mask=mask, progress=False,
                                  return_summary=True)
  plan = tiling.plan_tiles(vol.shape, 16, 0.0)
  assert summary['tiles'] == 1 and summary['tiles_skipped'] == plan.num_tiles - 1
  truth = np.stack(field(*g))
  np.testing.assert_allclose(flow[:, mask], truth[:, mask], atol=1e-5)
  assert (flow[:, ~mask] == 0).all()


def test_memmapped_accumulators_give_the_same_flow(volume):
  vol, _ = volume
  a = tiled.run_tiled(stand_in, vol, vol, tile=16, batch=3, progress=False, memmap=False)
  b, summary = tiled.run_tiled(stand_in, vol, vol, tile=16, batch=3, progress=False, memmap=True,
                               return_summary=True)
  assert summary['memmap'] and isinstance(b, np.memmap)
  np.testing.assert_array_equal(a, b)


def test_progress_bar_and_summary_line(volume, capsys):
  vol, _ = volume
  _, summary = tiled.run_tiled(stand_in, vol, vol, tile=16, batch=4, progress=True, return_summary=True)
  err = capsys.readouterr().err
  assert 'tiles: 100%' in err and f'{summary["tiles"]}/{summary["tiles"]} [' in err  # tqdm's bar, finished
  line = tiled.format_summary(summary)
  assert f'{vol.size:,} voxels' in line and 'voxels/s' in line and f'{summary["tiles"]} tiles' in line


@pytest.mark.parametrize('vol0, vol1, kwargs, message', [
    (np.zeros((16, 16, 16)), np.zeros((16, 16, 17)), {}, 'vol1: shape'),
    (np.zeros((16, 16)), np.zeros((16, 16)), {}, 'vol0: expected a 3-D volume'),
    (np.zeros((1, 16, 16, 16)), np.zeros((1, 16, 16, 16)), {}, 'vol0: expected a 3-D volume'),
    (np.zeros((0, 16, 16)), np.zeros((0, 16, 16)), {}, 'vol0: is empty'),
    (np.zeros((16, 16, 16)), np.full((16, 16, 16), np.inf), {}, 'vol1: holds non-finite'),
    (np.zeros((16, 16, 16)), np.zeros((16, 16, 16)), {'tile': 4, 'min_size': 5}, 'tile .* smaller than the model'),
    (np.zeros((16, 16, 16)), np.zeros((16, 16, 16)), {'blend': 'box'}, 'blend'),
    (np.zeros((16, 16, 16)), np.zeros((16, 16, 16)), {'overlap': 1.5}, 'overlap'),
    (np.zeros((16, 16, 16)), np.zeros((16, 16, 16)), {'batch': 0}, 'batch'),
    (np.zeros((16, 16, 16)), np.zeros((16, 16, 16)), {'mask': np.ones((8, 8, 8))}, 'mask: shape'),
    (np.zeros((16, 16, 16), complex), np.zeros((16, 16, 16)), {}, 'dtype'),
])
def test_refuses_bad_input(vol0, vol1, kwargs, message):
  kwargs = {'tile': 8, **kwargs}
  with pytest.raises(ValueError, match=message):
    tiled.run_tiled(stand_in, vol0, vol1, progress=False, **kwargs)


def test_shards_batches_over_devices():
  # Two host devices need a fresh process (the device count is fixed when JAX starts).
  code = textwrap.dedent('''
      import numpy as np, jax
      from tests.infer.test_tiled_runner import encoded_volume, field, stand_in
      from raftdvc_jax.infer import tiled
      assert jax.local_device_count() == 2
      vol, g = encoded_volume((37, 29, 45))
      flow, s = tiled.run_tiled(stand_in, vol, vol, tile=16, overlap=0.5, batch=3, progress=False,
                                return_summary=True)
      np.testing.assert_allclose(flow, np.stack(field(*g)), atol=1e-5, rtol=1e-5)
      assert s['devices'] == 2 and s['batch'] == 4, s
      print('ok')
  ''')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=root, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]


def random_variables(model, cfg, seed):
  """Random fan-in-scaled weights from the shapes alone (compiling model.init costs more than the test)."""
  vol = jnp.zeros((1, 16, 16, 16), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), vol, vol, iters=1))
  rng = np.random.default_rng(seed)
  def draw(s):
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0
    return rng.normal(0, 1 / np.sqrt(fan_in), s.shape).astype(s.dtype) if fan_in else np.zeros(s.shape, s.dtype)
  return jax.tree.map(draw, shapes)


def test_real_model_one_tile_equals_whole_volume_forward():
  cfg = preset('s8').replace(corr_levels=2)
  model = RAFTDVC(cfg)
  variables = random_variables(model, cfg, seed=0)
  rng = np.random.default_rng(1)
  vol0 = rng.random((32, 32, 32), np.float32)
  vol1 = np.roll(vol0, 1, axis=0)
  apply = tiled.model_apply_fn(model, iters=2)
  whole = jax.jit(apply)(variables, vol0[None], vol1[None])
  whole = np.moveaxis(np.asarray(whole[0]), -1, 0)
  for tile in (32, 48):  # exactly the volume, and larger (clipped)
    flow = tiled.run_tiled(apply, vol0, vol1, tile=tile, overlap=0.5, batch=2, params=variables,
                           min_size=cfg.min_size, progress=False)
    np.testing.assert_array_equal(flow, whole)
  assert np.abs(whole).max() > 0
  # The memory estimate follows XLA's own accounting of the same compiled forward.
  mesh = tiled.data_mesh()
  compiled = tiled.compile_tile_fn(apply, 1, (32, 32, 32), None, mesh, variables)
  stats = compiled.memory_analysis()
  actual = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
  estimate = memory.tile_memory(cfg, (32, 32, 32)).total
  assert 0.5 < actual / estimate < 1.0


def test_memory_estimator_picks_batches_and_names_a_tile_that_fits():
  cfg = preset('s4')
  one = memory.tile_memory(cfg, (64, 64, 64), 1)
  two = memory.tile_memory(cfg, (64, 64, 64), 2)
  assert two.pyramid == 2 * one.pyramid and two.total > one.total
  assert one.correlation == 3 * 4 * 16**6  # three level-0 buffers of (16^3)^2 float32
  assert memory.param_bytes(cfg) == 4 * 2_121_459  # RAFT-DVC's parameter count
  budget = int(2.5 * one.total)
  batch = memory.pick_batch(cfg, (64, 64, 64), budget=budget)
  assert memory.tile_memory(cfg, (64,) * 3, batch).total <= budget < memory.tile_memory(cfg, (64,) * 3, batch + 1).total
  assert memory.pick_batch(cfg, (64, 64, 64), budget=budget, devices=4) == 4 * batch
  with pytest.raises(memory.TileTooLargeError, match=r'128x128x128 tile needs .* use --tile (\d+) or smaller') as e:
    memory.pick_batch(cfg, (128, 128, 128), budget=budget)
  side = int(str(e.value).split('--tile ')[1].split()[0])
  assert memory.tile_memory(cfg, (side,) * 3).total <= budget < memory.tile_memory(cfg, (side + 4,) * 3).total
  assert isinstance(e.value, ValueError)
  assert memory.device_memory_bytes() > 0
  # A volume smaller than the tile gets the clipped tile's batch.
  assert memory.auto_batch(cfg, (40, 40, 64), 64, budget=budget, devices=1) == memory.pick_batch(
      cfg, (40, 40, 64), budget=budget) > batch


def test_demo_scores_and_draws(tmp_path):
  path = tmp_path / 'demo.png'
  report = demo.run_demo(lambda v0, v1: np.zeros((3, *v0.shape), np.float32), path, stride=2, size=24, seed=3,
                         trained=False)
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert report['epe_mean'] == pytest.approx(report['epe_zero_flow'], rel=1e-5) and report['epe_mean'] > 0.5
  text = demo.format_report(report)
  assert 'randomly initialised weights' in text and 'EPE mean' in text and str(path) in text
  assert 'no better than predicting no motion' in demo.format_report(dict(report, trained=True))
  pair = demo.make_pair(stride=2, size=24, seed=3)
  assert demo.epe_stats(pair['flow'], pair['flow'])['epe_max'] == 0
  with pytest.raises(ValueError, match='png'):
    demo.save_figure(tmp_path / 'x.jpg', pair['I1'], pair['I2'], pair['flow'], pair['flow'])
  assert not list(tmp_path.glob('.*tmp*'))  # nothing half-written left behind
