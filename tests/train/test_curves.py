"""Learning curves from metrics.jsonl, and the tool that draws them."""

import json
import subprocess
import sys

import numpy as np
import pytest

from raftdvc_jax.train import curves


def _write(path, records):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_plot_metrics_writes_a_png_with_every_panel(tmp_path):
  records = [{'step': s, 'train_loss': 10.0 / s, 'train_epe': 1.0, 'lr': 1e-4 * s, 'train_corr_loss': 5.0 / s}
             for s in range(1, 40)]
  records += [{'step': 40, 'train_loss': 0.2, 'lr': 1e-3, 'val_epe': 0.5, 'val_zero_epe': 0.9}]
  _write(tmp_path / 'metrics.jsonl', records)
  out = curves.plot_metrics(curves.read_metrics(tmp_path), tmp_path / 'c.png', 'run')
  from matplotlib import image
  img = image.imread(out)
  assert img.shape[0] > 200 and img.shape[1] > 600
  assert np.std(img[..., :3]) > 0.05  # not a blank canvas


def test_bad_records_are_one_line_errors(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl:2'):
    curves.read_metrics(tmp_path / 'metrics.jsonl')


def test_tool_refuses_to_overwrite_and_has_help(tmp_path):
  _write(tmp_path / 'metrics.jsonl', [{'step': 1, 'train_loss': 1.0, 'lr': 1e-4}])
  out = tmp_path / 'c.png'
  out.write_bytes(b'keep')
  cmd = [sys.executable, 'tools/plot_metrics.py', '--metrics', str(tmp_path), '--output', str(out)]
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  assert done.returncode != 0 and 'already exists' in done.stderr and out.read_bytes() == b'keep'
  assert subprocess.run(cmd[:2] + ['--help'], capture_output=True, check=False).returncode == 0
