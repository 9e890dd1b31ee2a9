"""Export of a training run (raftdvc-export): the weights load by path, a killed run exports too."""

import json
import os
import subprocess
import sys

import numpy as np

import raftdvc_jax
from tests.scripts import script
from tests.infer.test_distributed import tiny_run, tiny_variables

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_run_killed_mid_record_exports_its_best_step(tmp_path):
  """The loop skips a record cut short by a kill; so does export, which reads the validation record."""
  run = tiny_run(tmp_path / 'run', steps=(1, 2))
  records = [{'step': 1, 'train_loss': 2.0, 'val_epe': 0.5, 'val_zero_epe': 1.0},
             {'step': 2, 'train_loss': 1.0}]
  with open(os.path.join(run, 'metrics.jsonl'), 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in records) + '{"step": 3, "train_lo')  # killed mid-write
  out = tmp_path / 'weights'
  proc = subprocess.run([script('raftdvc-export'), '--run', run, '--output', str(out), '--which', 'latest'], capture_output=True, text=True,
                        cwd=tmp_path, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  estimator = raftdvc_jax.load(str(out))
  assert estimator.provenance['step'] == 2 and estimator.provenance['validation'] == {}
  np.testing.assert_array_equal(estimator.params['fnet']['conv1']['kernel'],
                                tiny_variables()['params']['fnet']['conv1']['kernel'])


def test_a_damaged_record_in_the_middle_is_still_refused(tmp_path):
  run = tiny_run(tmp_path / 'run', steps=(1,))
  with open(os.path.join(run, 'metrics.jsonl'), 'w') as f:
    f.write('{"step": 1}\nnot json\n{"step": 2}\n')
  proc = subprocess.run([script('raftdvc-export'), '--run', run, '--output', str(tmp_path / 'weights')], capture_output=True, text=True, cwd=tmp_path,
                        timeout=300, check=False)
  assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith('error: '), proc.stderr
  assert 'metrics.jsonl:2' in proc.stderr and not os.path.exists(tmp_path / 'weights')


def test_a_step_directory_of_a_run_exports(tmp_path):
  run = tiny_run(tmp_path / 'run', steps=(1, 2))
  step_dir = os.path.join(run, 'checkpoints', '1')
  proc = subprocess.run([script('raftdvc-export'), '--run', step_dir, '--output', str(tmp_path / 'w')],
                        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  assert raftdvc_jax.load(str(tmp_path / 'w')).provenance['step'] == 1
