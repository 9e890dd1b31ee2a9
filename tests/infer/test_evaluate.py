"""raftdvc-evaluate (raftdvc_jax.infer.evaluate): per-sample and summary endpoint errors of a checkpoint over a dataset with ground truth."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jax

import raftdvc_jax
from raftdvc_jax.infer import evaluate
from tests.scripts import script
from raftdvc_jax.convert import orbax_io
from raftdvc_jax.data import io as data_io
from raftdvc_jax.data import synthetic
from raftdvc_jax.model.config import ModelConfig
from raftdvc_jax.model.raft import init_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = ModelConfig(encoder_type='1/8', feature_dim=16, hidden_dim=16, context_dim=16, corr_levels=2,
                     corr_radius=2, iters=2)


def random_variables(config, seed):
  """Variables of the right shapes without compiling an initialisation (small normal values)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


@pytest.fixture(scope='module', name='setup')
def _setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('evaluate')
  checkpoint = orbax_io.save(str(root / 'converted'), CONFIG, random_variables(CONFIG, 1))
  split = root / 'data' / 'test'
  split.mkdir(parents=True)
  for i, family in enumerate(('translation', 'affine', 'translation')):
    pair = synthetic.make_pair(synthetic.SyntheticConfig(size=16, deformation=family, disp_min=0.5, disp_max=1.5),
                               (5, i))
    mask = None
    if i == 2:  # only the first half along axis 0 counts
      mask = np.zeros(pair['I1'].shape, np.float32)
      mask[:8] = 1
    data_io.write_sample(str(split / f'sample_{i:05d}.npz'), pair['I1'], pair['I2'], pair['flow'],
                         json.dumps(pair['metadata']), mask=mask)
  return str(checkpoint), str(root / 'data')


def test_evaluate_matches_a_direct_computation(setup):
  checkpoint, data = setup
  estimator = raftdvc_jax.load(checkpoint)
  rows, summary = evaluate.evaluate(estimator, os.path.join(data, 'test'), progress=False)
  assert [r['name'] for r in rows] == ['sample_00000.npz', 'sample_00001.npz', 'sample_00002.npz']
  assert [r['deformation'] for r in rows] == ['translation', 'affine', 'translation']
  for i, row in enumerate(rows):
    s = data_io.read_sample(os.path.join(data, 'test', row['name']))
    err = np.linalg.norm(estimator(s['I1'], s['I2']) - s['flow'], axis=0)
    mag = np.linalg.norm(s['flow'], axis=0)
    if i == 2:
      err, mag = err[:8], mag[:8]
    assert row['epe_mean'] == pytest.approx(err.mean(), rel=1e-5)
    assert row['epe_max'] == pytest.approx(err.max(), rel=1e-5)
    assert row['gt_flow_mag_mean'] == pytest.approx(mag.mean(), rel=1e-5)
  means = np.array([r['epe_mean'] for r in rows])
  assert summary['n_samples'] == 3
  for key, value in (('epe_mean', means.mean()), ('epe_std', means.std()), ('epe_median', np.median(means)),
                     ('epe_p90', np.percentile(means, 90)), ('epe_p99', np.percentile(means, 99))):
    assert summary[key] == pytest.approx(value, rel=1e-9), key
  assert summary['per_deformation']['translation']['n_samples'] == 2
  assert summary['per_deformation']['affine']['epe_mean'] == pytest.approx(rows[1]['epe_mean'])


def _run(*args):
  return subprocess.run([script('raftdvc-evaluate'), *args], capture_output=True, text=True, timeout=600,
                        check=False)


def test_cli_writes_csv_and_summary_and_rejects_bad_input(setup, tmp_path):
  checkpoint, data = setup
  out = tmp_path / 'eval'
  proc = _run(f'--checkpoint={checkpoint}', f'--data={data}', '--split=test', f'--output={out}', '--noprogress')
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(out / 'metrics.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['name'] for r in rows] == ['sample_00000.npz', 'sample_00001.npz', 'sample_00002.npz']
  assert set(rows[0]) == {'name', 'epe_mean', 'epe_max', 'gt_flow_mag_mean', 'deformation'}
  with open(out / 'summary.json') as f:
    summary = json.load(f)
  assert summary['n_samples'] == 3 and summary['iters'] == 2
  assert summary['epe_mean'] == pytest.approx(np.mean([float(r['epe_mean']) for r in rows]), rel=1e-4)

  bad = tmp_path / 'bad'
  proc = _run(f'--checkpoint={checkpoint}', f'--data={tmp_path / "missing"}', f'--output={bad}')
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith('error: ') and 'missing' in proc.stderr
  assert 'Traceback' not in proc.stderr and not bad.exists()
  proc = _run(f'--checkpoint={tmp_path / "nowhere"}', f'--data={data}', '--split=test', f'--output={bad}')
  assert proc.returncode == 1 and 'nowhere' in proc.stderr and 'Traceback' not in proc.stderr
  # Results already in --output are kept unless --overwrite: refused before the model loads.
  before = (out / 'metrics.csv').read_bytes()
  proc = _run(f'--checkpoint={tmp_path / "nowhere"}', f'--data={data}', '--split=test', f'--output={out}')
  assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
      f'error: {out / "metrics.csv"}: the result exists; pass --overwrite to replace it']
  assert (out / 'metrics.csv').read_bytes() == before
  proc = _run('--help')
  assert proc.returncode == 0 and '--[no]overwrite' in proc.stdout
