"""Shipped weights: names resolve inside the installed package and load as estimators."""

import numpy as np
import pytest

import raftdvc_jax
from raftdvc_jax import weights


ARMS = {'s4-starter': '1/4', 's8-starter': '1/8'}  # the encoder each shipped name is


def test_every_shipped_name_loads_and_runs():
  assert set(weights.NAMES) <= set(ARMS)
  for name in weights.NAMES:
    estimator = raftdvc_jax.load(name)
    assert estimator.config.encoder_type == ARMS[name] and estimator.provenance.get('step', 0) > 0
    size = estimator.config.min_size * 2
    vol = np.random.default_rng(0).random((size,) * 3, np.float32)
    flow = estimator(vol, vol, iters=1)
    assert flow.shape == (3, size, size, size) and np.all(np.isfinite(flow))


def test_a_path_wins_over_a_name_and_unknown_names_are_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 's4-starter').mkdir()  # a user's folder of that name is what they mean
  assert weights.resolve('s4-starter') == 's4-starter'
  assert weights.resolve('no-such-weights') == 'no-such-weights'
  with pytest.raises(ValueError, match='s4-starter'):
    weights.directory('s9-large')


def test_training_can_start_from_a_shipped_name():
  from raftdvc_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  for name in weights.NAMES:
    est = raftdvc_jax.load(name)
    variables = state_lib.load_pretrained(name, est.config)
    leaves = jax_leaves(variables['params'])
    assert len(leaves) == len(jax_leaves(est.params)) > 50
    for a, b in zip(leaves, jax_leaves(est.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def jax_leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.leaves(tree)


def test_shipped_starter_records_the_tiles_it_was_trained_for():
  est = raftdvc_jax.load('s4-starter')
  assert est.recommended_tiling() == (64, 0.5)
  # What infer.py and eval_weights run with: the recommendation fills only what the caller left open.
  assert est.tiling() == (64, 0.5) and est.tiling(overlap=0.25) == (64, 0.25)
  assert est.tiling(32) == (32, None) and est.tiling(0, 0.3) == (0, 0.3)


def test_a_model_config_with_the_old_correlation_word_still_loads(tmp_path):
  """model_config.json files written with 'corr_method' (or the new run-time words) load unchanged."""
  import json  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  folder = tmp_path / 'old'
  shutil.copytree(weights.directory('s4-starter'), folder)
  with open(folder / 'model_config.json') as f:
    config = json.load(f)
  with open(folder / 'model_config.json', 'w') as f:
    json.dump(dict(config, corr_method='auto', lookup='slab'), f)
  assert raftdvc_jax.load(str(folder)).config == raftdvc_jax.load('s4-starter').config
  with open(folder / 'model_config.json', 'w') as f:
    json.dump(dict(config, corr_levels_typo=2), f)
  with pytest.raises(ValueError, match='unknown keys'):
    raftdvc_jax.load(str(folder))


def test_shipped_weights_stay_small():
  """All shipped weights together stay under 10 MB (stored in float16, read back as float32)."""
  import os  # pylint: disable=import-outside-toplevel
  total = 0
  for name in weights.NAMES:
    folder = weights.directory(name)
    total += sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)
    assert raftdvc_jax.load(name).provenance['storage_dtype'] == 'float16'
  assert total < 10 * 2**20, total
