"""train.checkpoint.load_run: which step of a run loads, and what it says when steps do not."""

import logging
import os

import pytest

from raftdvc_jax.train import checkpoint


def _run(tmp_path, steps):
  for step in steps:
    os.makedirs(tmp_path / 'checkpoints' / str(step) / 'variables')
  return str(tmp_path)


def test_a_damaged_newest_step_is_named_and_an_older_one_used(tmp_path, caplog):
  run = _run(tmp_path, (3, 6))

  def load(step_dir):
    if step_dir.endswith(os.sep + '6'):
      raise ValueError(f'{step_dir}: truncated')
    return 'ok'

  with caplog.at_level(logging.INFO, logger='raftdvc_jax'):
    step_dir, result = checkpoint.load_run(run, 'latest', load=load)
  assert result == 'ok' and step_dir.endswith(os.sep + '3')
  assert 'skipped step 6 (latest)' in caplog.text and 'using step 3' in caplog.text


def test_when_no_step_loads_no_step_is_blamed_and_the_error_says_so(tmp_path, caplog):
  """A restore that fails for every step (another model, a multi-process placement) is not damage."""
  run = _run(tmp_path, (3, 6))

  def load(step_dir):
    raise ValueError(f'{step_dir}: cannot restore')

  with caplog.at_level(logging.INFO, logger='raftdvc_jax'), pytest.raises(ValueError) as e:
    checkpoint.load_run(run, 'latest', load=load)
  assert 'skipped' not in caplog.text
  assert str(e.value).startswith(os.path.join(run, 'checkpoints', '6') + ': cannot restore')
  assert 'none of the 2 steps' in str(e.value)
