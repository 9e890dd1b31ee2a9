"""The memory-light 'local' correlation equals the all-pairs pyramid lookup, forward and gradient."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from raftdvc_jax.model import corr, corr_local

SAMPLERS = ('exact', 'raftdvc_v1', 'volraft')
C = 8


def _case(shape, batch=2, seed=0, spread=3.0):
  """Feature maps and lookup coords: a smooth flow on the low half of axis 0, wild ones on the high half."""
  rng = np.random.default_rng(seed)
  f0 = jnp.asarray(rng.normal(size=(batch, *shape, C)), jnp.float32)
  f1 = jnp.asarray(rng.normal(size=(batch, *shape, C)), jnp.float32)
  grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing='ij'), -1)
  smooth = spread * np.sin(grid[..., ::-1] / 5.0 + np.arange(3)) + 0.37
  wild = rng.uniform(-spread, spread, size=(batch, *shape, 3))
  flow = np.where(grid[..., :1] < shape[0] // 2, smooth, wild)
  return f0, f1, jnp.asarray(grid + flow, jnp.float32)


def _both(f0, f1, coords, levels, radius, sampler, chunk, margin=0):
  """All-pairs lookup, local lookup and the local lookup's fast-path fraction, each compiled once."""
  ref = jax.jit(lambda a, b, c: corr.AllPairsCorr.build(a, b, levels, radius, sampler, 'separable')(c))
  local = lambda a, b: corr_local.LocalCorr.build(a, b, levels, radius, sampler, chunk=chunk, margin=margin)
  loc = jax.jit(lambda a, b, c: local(a, b)(c))
  fit = jax.jit(lambda a, b, c: local(a, b).fit_fraction(c))
  return ref(f0, f1, coords), loc(f0, f1, coords), float(fit(f0, f1, coords))  # separable == reference


@pytest.mark.parametrize('sampler', SAMPLERS)
@pytest.mark.parametrize('shape,levels,radius', [((12, 10, 14), 2, 1), ((12, 12, 12), 3, 2)])
def test_forward_equals_all_pairs(sampler, shape, levels, radius):
  f0, f1, coords = _case(shape)
  # 3 tiles per step never divide the tile count: the steps are padded. Both paths run: the smooth half's
  # tiles share blocks, the wild half's fall back to per-query blocks.
  ref, loc, fit = _both(f0, f1, coords, levels, radius, sampler, chunk=3 * 64)
  assert 0.2 < fit < 0.9
  assert loc.shape == ref.shape == (2, *shape, levels * (2 * radius + 1)**3)
  assert float(jnp.abs(ref).max()) > 1.0
  np.testing.assert_allclose(loc, ref, atol=2e-5)


def test_smooth_flows_take_the_shared_block_path():
  f0, f1, coords = _case((16, 16, 16), batch=1, spread=2.0)
  local = corr_local.LocalCorr.build(f0, f1, 2, 2, margin=2)
  assert float(local.fit_fraction(coords[:, :8])) == 1.0
  assert float(local.fit_fraction(coords[:, 8:])) < 1.0


def test_far_queries_and_singleton_levels_read_zeros_like_all_pairs():
  f0, f1, coords = _case((4, 6, 8), spread=40.0)  # level 2 is (1, 1, 2): grid_sample reads zeros there
  ref, loc, _ = _both(f0, f1, coords, 3, 1, 'exact', chunk=64)
  np.testing.assert_allclose(loc, ref, atol=2e-5)
  assert float(jnp.abs(loc[..., 2 * 27:]).max()) == 0.0
  assert float((loc == 0).mean()) > 0.3  # most windows left the volume


@pytest.mark.parametrize('sampler', SAMPLERS)
def test_gradient_equals_all_pairs(sampler):
  shape = (10, 8, 12)
  f0, f1, coords = _case(shape, batch=1, seed=1)
  w = jnp.asarray(np.random.default_rng(2).normal(size=(1, *shape, 2 * 27)), jnp.float32)

  def loss(build):
    return lambda a, b, c: jnp.sum(w * build(a, b, c))

  ref = loss(lambda a, b, c: corr.AllPairsCorr.build(a, b, 2, 1, sampler, 'separable')(c))
  loc = loss(lambda a, b, c: corr_local.LocalCorr.build(a, b, 2, 1, sampler, chunk=128, margin=0)(c))
  g_ref = jax.jit(jax.grad(ref, argnums=(0, 1, 2)))(f0, f1, coords)
  g_loc = jax.jit(jax.grad(loc, argnums=(0, 1, 2)))(f0, f1, coords)
  for name, a, b in zip(('fmap0', 'fmap1', 'coords'), g_ref, g_loc):
    assert float(jnp.abs(a).max()) > 0.1, name
    np.testing.assert_allclose(b, a, atol=5e-5, rtol=1e-4, err_msg=name)


def _temp_bytes(fn, *args):
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_memory_is_bounded_by_the_chunk_not_the_grid():
  shape = (16, 16, 16)
  f0, f1, coords = _case(shape, batch=1)
  level0 = 4 * math.prod(shape) ** 2  # one all-pairs level 0: 64 MiB

  def local(chunk):
    return _temp_bytes(lambda a, b, c: corr_local.LocalCorr.build(a, b, 2, 4, chunk=chunk, margin=0)(c),
                       f0, f1, coords)

  allpairs = _temp_bytes(lambda a, b, c: corr.AllPairsCorr.build(a, b, 2, 4, 'exact')(c), f0, f1, coords)
  small, large = local(64), local(1024)
  out = 4 * math.prod(shape) * 2 * 9**3  # the lookup's own output, which both formulations hold
  assert allpairs > level0 + out
  assert small - out < level0 / 16
  assert small < large  # the working set grows with the chunk


def test_byte_estimate_grows_with_the_chunk():
  small = corr_local.local_bytes((48, 48, 48), 2, 4, 128, chunk=256)
  assert small < corr_local.local_bytes((48, 48, 48), 2, 4, 128, chunk=1024) < corr.pyramid_bytes((48,) * 3, 2)


def test_bad_arguments_name_the_problem():
  f0, f1, _ = _case((4, 4, 4), batch=1)
  with pytest.raises(ValueError, match='unknown sampler'):
    corr_local.LocalCorr.build(f0, f1, 2, 1, 'bogus')
  with pytest.raises(ValueError, match='too small'):
    corr_local.LocalCorr.build(f0, f1, 4, 1)
  with pytest.raises(ValueError, match='chunk'):
    corr_local.LocalCorr.build(f0, f1, 2, 1, chunk=0)
  with pytest.raises(ValueError, match='margin'):
    corr_local.LocalCorr.build(f0, f1, 2, 1, margin=-1)



def test_the_model_dispatch_builds_local_or_all_pairs():
  f0, f1, coords = _case((8, 8, 8), batch=1)
  local = corr.build(f0, f1, 2, 1, 'volraft', correlation='local')  # what RAFTDVC(correlation=) calls
  allpairs = corr.build(f0, f1, 2, 1, 'volraft', correlation='allpairs', lookup='slab')
  assert isinstance(local, corr_local.LocalCorr) and isinstance(allpairs, corr.AllPairsCorr)
  assert allpairs.lookup == 'slab'
  np.testing.assert_allclose(jax.jit(local.__call__)(coords), jax.jit(allpairs.__call__)(coords), atol=2e-5)
  with pytest.raises(ValueError, match='allpairs'):
    corr.build(f0, f1, 2, 1, correlation='bogus')
  with pytest.raises(ValueError, match='lookup'):
    corr.AllPairsCorr.build(f0, f1, 2, 1, lookup='local')  # the two words are not mixed


def test_the_memory_planner_knows_local():
  from raftdvc_jax.infer import memory
  from raftdvc_jax.model.config import S2
  allpairs = memory.tile_memory(S2, (96, 96, 96)).total
  local = memory.tile_memory(S2, (96, 96, 96), correlation='local').total
  assert allpairs > 40 * 2**30  # level 0 alone is 49 GB at a 48^3 feature grid
  assert local < 6 * 2**30      # the s2 arm's whole 96^3 volume ran at 2.25 GiB peak RSS (docs/performance.md)
  assert memory.choose_correlation(S2, (96,) * 3, 1, int(1.01 * local)) == 'local'
  assert memory.choose_correlation(S2, (16,) * 3, 1, int(1.01 * local)) == 'allpairs'
  assert memory.choose_correlation(S2, (96,) * 3, 1, 2**20, 'allpairs') == 'allpairs'  # explicit: as given
  # auto plans with local where all-pairs cannot take one tile; all-pairs' refusal points to local.
  assert memory.pick_batch(S2, (96,) * 3, budget=int(1.01 * local), correlation='auto') == 1
  with pytest.raises(memory.TileTooLargeError, match='use --correlation local'):
    memory.pick_batch(S2, (96,) * 3, budget=int(1.01 * local))
  assert memory.largest_cube_tile(S2, int(1.01 * local), correlation='auto') >= 96


def test_estimator_auto_runs_local_when_all_pairs_does_not_fit(monkeypatch):
  from raftdvc_jax.infer import estimator as estimator_lib
  from raftdvc_jax.infer import memory
  from raftdvc_jax.model.config import ModelConfig
  from raftdvc_jax.model.raft import init_params
  cfg = ModelConfig(encoder_type='1/2', feature_dim=16, hidden_dim=16, context_dim=16, corr_levels=2,
                    corr_radius=2, iters=2)  # a 12^3 feature grid: all-pairs' build outweighs the encoders
  variables = init_params(cfg, jax.random.key(0), optimize=False)
  rng = np.random.default_rng(0)
  vol0 = rng.random((24, 24, 24)).astype(np.float32)
  vol1 = np.roll(vol0, 1, axis=2)
  tile = (24, 24, 24)
  local = memory.tile_memory(cfg, tile, 1, 'local').total
  assert local < memory.tile_memory(cfg, tile, 1, 'allpairs').total
  methods = []
  real = estimator_lib._tile_fn
  monkeypatch.setattr(estimator_lib, '_tile_fn', lambda c, m, *a: methods.append(m) or real(c, m, *a))
  auto = estimator_lib.FlowEstimator(cfg, variables)
  allpairs = estimator_lib.FlowEstimator(cfg, variables, correlation='allpairs')
  monkeypatch.setattr(memory, 'default_budget', lambda: local)  # room for local only
  flow = auto(vol0, vol1)
  monkeypatch.setattr(memory, 'default_budget', lambda: 2**40)
  ref = allpairs(vol0, vol1)
  assert methods == ['local', 'allpairs']
  assert float(np.abs(ref).max()) > 1e-3
  np.testing.assert_allclose(flow, ref, atol=1e-4)
