"""The trainer end to end on a tiny version of configs/smoke.py: learning, kill-and-resume, training on,
checkpoint layout and fine-tuning sources.

Every run here shares one model and config.train, so the train step compiles once for the whole file.
"""

import importlib.util
import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

import jax

import raftdvc_jax
from raftdvc_jax.convert import mapping
from raftdvc_jax.convert import orbax_io
from raftdvc_jax.model.config import ModelConfig
from raftdvc_jax.model.raft import RAFTDVC, init_params
from raftdvc_jax.train import checkpoint
from raftdvc_jax.train import loop
from raftdvc_jax.train import state as state_lib
from raftdvc_jax.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(num_steps=6, **data):
  """configs/smoke.py shrunk to 16^3 volumes, a stride-8 encoder with 16 channels and 2 iterations."""
  spec = importlib.util.spec_from_file_location('smoke_config', os.path.join(ROOT, 'configs', 'smoke.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.update(encoder_type='1/8', feature_dim=16, hidden_dim=16, context_dim=16, corr_levels=2, corr_radius=2,
                 iters=2)
  c.data.synthetic.update(size=16, disp_min=0.5, disp_max=1.5, deformation='translation')
  c.data.val_size = 2
  c.data.num_workers = 1
  c.data.augment.update(flip_prob=0.5, rot90_planes=((1, 2),))  # resumed runs must redraw the same augmentation
  c.data.update(data)
  c.train.update(num_steps=num_steps, batch_size=2, lr=1e-3, log_every=1, eval_every=2, checkpoint_every=2,
                 keep_checkpoints=2)
  # The loop's mechanics: test_the_correlation_loss_is_trained_and_logged and the match warm-up test add these.
  c.train.loss.update(corr_weight=0.0, match_warmup=0)
  # A schedule that does not depend on num_steps (so training on reuses the compiled step) but changes every step
  # (so a resumed step count that is off shows in the lr).
  c.train.schedule = dict(name='cyclic', base_lr=1e-4, step_size_up=2, step_size_down=3, mode='triangular2',
                          steps_per_epoch=1)
  return c


class Killed(Exception):
  """Stands for a SIGKILL: the loop gets no chance to save."""


def kill_at_batch(monkeypatch, n):
  """Makes the training stream raise Killed when batch n (1-based, this run) is requested."""
  real = loop.input_pipeline.train_batches

  def batches(*args, **kwargs):
    stream = real(*args, **kwargs)
    try:
      for _ in range(n - 1):
        yield next(stream)
      raise Killed
    finally:
      stream.close()

  monkeypatch.setattr(loop.input_pipeline, 'train_batches', batches)


def random_variables(config, seed):
  """Variables of the right shapes without compiling an initialisation (small normal values)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def without_timing(recs):
  return [{k: v for k, v in r.items() if k != 'steps_per_s'} for r in recs]


@pytest.fixture(scope='module', name='uninterrupted')
def _uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  loop.train_and_evaluate(tiny_config(6), workdir, progress=False)
  return workdir


def test_smoke_config_steps_lower_the_loss(tmp_path):
  # Two fixed pairs, no augmentation: a few steps must fit them better.
  config = tiny_config(6, train_size=2)
  config.data.augment.update(flip_prob=0.0, rot90_planes=())
  loop.train_and_evaluate(config, str(tmp_path), progress=False)
  losses = [r['train_loss'] for r in records(str(tmp_path))]
  assert len(losses) == 6 and all(np.isfinite(losses))
  assert np.mean(losses[-2:]) < 0.8 * losses[0], losses


def test_the_correlation_loss_is_trained_and_logged(tmp_path):
  config = tiny_config(2, train_size=2)
  config.train.loss.corr_weight = 1.0
  loop.train_and_evaluate(config, str(tmp_path), progress=False)
  rows = [r for r in records(str(tmp_path)) if 'train_loss' in r]
  assert len(rows) == 2
  for r in rows:  # the logged total holds the weighted correlation loss on top of the sequence loss
    assert np.isfinite(r['train_corr_loss']) and r['train_corr_loss'] > 0.1
    assert r['train_loss'] > r['train_corr_loss']


@pytest.mark.filterwarnings('ignore:Sharding info not provided')  # the optimizer state is read back raw
def test_match_warmup_trains_the_feature_encoder_alone_then_restarts_the_optimizer(tmp_path, monkeypatch):
  config = tiny_config(3, train_size=2)
  config.train.loss.match_warmup = 2
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(config, workdir, progress=False)
  rows = records(workdir)
  assert [r['step'] for r in rows] == [1, 2, 3]
  for r in rows[:2]:  # warm-up: the correlation loss is the whole loss, no flow, the constant peak lr
    assert 'train_epe' not in r and r['train_loss'] == r['train_corr_loss'] > 0.1
    assert r['lr'] == pytest.approx(config.train.lr)
  assert np.isfinite(rows[2]['train_epe']) and 'train_corr_loss' not in rows[2]
  assert rows[2]['lr'] == pytest.approx(config.train.schedule.base_lr)  # the schedule starts at the switch
  model_config = ModelConfig.from_dict(config.model.to_dict())
  before = state_lib.initial_variables(model_config, config.train.seed)['params']
  after = orbax_io.load_variables(os.path.join(workdir, 'checkpoints', '2'))[1]['params']
  for name in before:
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]))]
    assert any(changed) if name == 'fnet' else not any(changed), name
  # Killed right after the warm-up's checkpoint, a resumed run restarts the optimizer just the same.
  resumed = str(tmp_path / 'resumed')
  kill_at_batch(monkeypatch, 3)
  with pytest.raises(Killed):
    loop.train_and_evaluate(config, resumed, progress=False)
  monkeypatch.undo()
  loop.train_and_evaluate(config, resumed, progress=False)
  assert without_timing(records(resumed)) == without_timing(rows)
  end = [orbax_io.load_variables(os.path.join(w, 'checkpoints', '3'))[1] for w in (workdir, resumed)]
  for a, b in zip(jax.tree.leaves(end[0]), jax.tree.leaves(end[1])):
    np.testing.assert_array_equal(a, b)
  # Both restarted the optimizer: its step counts (Adam's and the schedule's) count the one step after it.
  for w in (workdir, resumed):
    saved = ocp.PyTreeCheckpointer().restore(os.path.join(w, 'checkpoints', '3', 'train_state'))
    counts = [int(x) for x in jax.tree.leaves(saved['opt_state']) if np.ndim(x) == 0]
    assert counts and set(counts) == {1}, counts
  for bad in (3, None):
    config.train.loss.match_warmup = bad
    with pytest.raises(ValueError, match='match_warmup'):
      loop.train_and_evaluate(config, str(tmp_path / 'bad'), progress=False)


def test_match_loss_updates_only_the_feature_encoders_batch_statistics():
  config = ModelConfig.from_dict(dict(tiny_config().model.to_dict(), encoder_norm='batch', context_norm='batch'))
  variables = init_params(config, jax.random.key(0), optimize=False)
  rng = np.random.default_rng(0)
  mb = {'vol0': rng.random((2, 16, 16, 16), np.float32), 'vol1': rng.random((2, 16, 16, 16), np.float32),
        'flow': rng.standard_normal((2, 3, 16, 16, 16)).astype(np.float32)}
  match_loss = jax.jit(step_lib.match_loss_fn(RAFTDVC(config)))
  loss, (metrics, stats) = match_loss(variables['params'], variables['batch_stats'], mb)
  assert np.isfinite(loss) and metrics['corr_loss'] == loss and set(stats) == set(variables['batch_stats'])
  for name in stats:
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stats[name]),
                                                 jax.tree.leaves(variables['batch_stats'][name]))]
    assert not any(same) if name == 'fnet' else all(same), name


def test_kill_and_resume_reproduces_the_uninterrupted_run(uninterrupted, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  # "Killed" while loading step 4's batch: the checkpoint of step 2 exists, metrics of step 3 were written.
  kill_at_batch(monkeypatch, 4)
  with pytest.raises(Killed):
    loop.train_and_evaluate(tiny_config(6), workdir, progress=False)
  monkeypatch.undo()
  assert [r['step'] for r in records(workdir)] == [1, 2, 3]
  assert checkpoint.resolve(workdir, 'latest').endswith(os.sep + '2')
  # The same command again resumes from step 2 and must write what the uninterrupted run wrote.
  last = loop.train_and_evaluate(tiny_config(6), workdir, progress=False)
  assert last['step'] == 6
  got, want = records(workdir), records(uninterrupted)
  assert [r['step'] for r in got] == [1, 2, 3, 4, 5, 6]
  assert without_timing(got) == without_timing(want)
  assert {'train_loss', 'lr', 'grad_norm', 'steps_per_s'} <= set(got[0])
  assert {'val_epe', 'val_epe_median', 'val_epe_p90'} <= set(got[1])
  _, resumed, _ = orbax_io.load_variables(checkpoint.resolve(workdir, 'latest'))
  _, straight, _ = orbax_io.load_variables(checkpoint.resolve(uninterrupted, 'latest'))
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_array_equal(a, b)


def test_checkpoints_load_for_inference_and_training_goes_on(uninterrupted, tmp_path):
  config = tiny_config(6)
  model_config = ModelConfig.from_dict(config.model.to_dict())
  # The layout the inference side reads: model_config.json beside variables/ in every step directory.
  with open(os.path.join(uninterrupted, 'model_config.json')) as f:
    assert ModelConfig.from_dict(json.load(f)) == model_config
  step_dir = checkpoint.resolve(uninterrupted, 'latest')
  assert os.path.isfile(os.path.join(step_dir, 'model_config.json'))
  loaded_config, variables, _ = orbax_io.load_variables(step_dir)
  assert loaded_config == model_config and set(variables) == {'params'}
  # Best by validation EPE: the lowest val_epe among the evaluated steps.
  vals = {r['step']: r['val_epe'] for r in records(uninterrupted) if 'val_epe' in r}
  assert checkpoint.resolve(uninterrupted) == os.path.join(uninterrupted, 'checkpoints',
                                                           str(min(vals, key=vals.get)))
  # raftdvc_jax.load takes the run directory itself and picks that best step.
  estimator = raftdvc_jax.load(uninterrupted)
  assert estimator.config == model_config
  best = orbax_io.load_variables(checkpoint.resolve(uninterrupted))[1]
  np.testing.assert_array_equal(estimator.params['fnet']['conv1']['kernel'], best['params']['fnet']['conv1']['kernel'])
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(os.path.join(uninterrupted,
                                                                                        'tensorboard')))

  # A larger num_steps trains on from the last checkpoint (on a copy, to leave the fixture intact).
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config(4), workdir, progress=False)
  last = loop.train_and_evaluate(tiny_config(8), workdir, progress=False)
  assert last['step'] == 8 and [r['step'] for r in records(workdir)] == list(range(1, 9))
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  vals = {r['step']: r['val_epe'] for r in records(workdir) if 'val_epe' in r}
  assert steps == sorted({6, 8, min(vals, key=vals.get)})  # the last 2 and the best
  # Finished: running again changes nothing.
  assert loop.train_and_evaluate(tiny_config(8), workdir, progress=False) == {'step': 8}
  assert len(records(workdir)) == 8


def test_config_and_workdir_errors(uninterrupted, tmp_path):
  config = tiny_config(6)
  config.train.grad_accum = 3
  with pytest.raises(ValueError, match='grad_accum'):
    loop.train_and_evaluate(config, str(tmp_path), progress=False)
  config = tiny_config(6)
  config.data.synthetic.size = 8
  with pytest.raises(ValueError, match='every side must be >= 9'):
    loop.train_and_evaluate(config, str(tmp_path), progress=False)
  config = tiny_config(6)
  config.model.hidden_dim = 24
  with pytest.raises(ValueError, match='different model'):
    loop.train_and_evaluate(config, uninterrupted, progress=False)


def test_init_from_converted_directory_and_pytorch_file(tmp_path):
  config = ModelConfig.from_dict(tiny_config().model.to_dict())
  variables = random_variables(config, 7)
  converted = orbax_io.save(str(tmp_path / 'converted'), config, variables)
  got = state_lib.load_pretrained(converted, config)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # A RAFT-DVC checkpoint file with the same weights.
  state_dict = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in mapping.to_torch(variables, config).items()}
  model_config = {'encoder_type': config.encoder_type, 'feature_dim': 16, 'hidden_dim': 16, 'context_dim': 16,
                  'corr_levels': 2, 'corr_radius': 2, 'iters': 2, 'corr_sampler_version': 2}
  pth = str(tmp_path / 'best_model.pth')
  torch.save({'model_state_dict': state_dict, 'model_config': model_config, 'epoch': 1}, pth)
  got = state_lib.load_pretrained(pth, config)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), b)
  with pytest.raises(ValueError, match='init_from'):
    state_lib.load_pretrained(converted, config.replace(hidden_dim=24))
  # A run with config.init_from starts from those weights: one Adam step (lr <= 1e-3) away from them, while a
  # fresh initialisation is nowhere near.
  run = tiny_config(1)
  run.init_from = pth
  loop.train_and_evaluate(run, str(tmp_path / 'finetune'), progress=False)
  _, trained, _ = orbax_io.load_variables(checkpoint.resolve(str(tmp_path / 'finetune')))
  step = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(variables)))
  assert 0 < step < 5e-3
  # A training run directory (which has a model_config.json of its own) gives its best step's weights.
  got = state_lib.load_pretrained(str(tmp_path / 'finetune'), config)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(np.asarray(a), b)


def events(workdir):
  """[(file, [Event])] of the TensorBoard event files of a run, in name order (TFRecord framing)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  folder = os.path.join(workdir, 'tensorboard')
  out = []
  for name in sorted(os.listdir(folder)):
    data, i, evs = open(os.path.join(folder, name), 'rb').read(), 0, []
    while i < len(data):
      (length,) = np.frombuffer(data[i:i + 8], '<u8')
      evs.append(event_pb2.Event.FromString(data[i + 12:i + 12 + int(length)]))
      i += 16 + int(length)
    out.append((name, evs))
  return out


def test_tensorboard_scalars_and_purge_on_resume(uninterrupted, tmp_path, monkeypatch):
  (_, evs), = events(uninterrupted)
  scalars = {(e.step, v.tag): v.simple_value for e in evs for v in e.summary.value}
  rec = records(uninterrupted)
  assert scalars[(1, 'train/loss')] == pytest.approx(rec[0]['train_loss'], rel=1e-6)
  assert scalars[(2, 'val/epe')] == pytest.approx(rec[1]['val_epe'], rel=1e-6)
  # A resumed run tells TensorBoard to drop what the killed one logged after its checkpoint (step 2).
  workdir = str(tmp_path)
  kill_at_batch(monkeypatch, 4)
  with pytest.raises(Killed):
    loop.train_and_evaluate(tiny_config(6), workdir, progress=False)
  monkeypatch.undo()
  loop.train_and_evaluate(tiny_config(6), workdir, progress=False)
  first, second = events(workdir)
  assert max(e.step for e in first[1] if e.summary.value) == 3
  starts = [e.step for e in second[1] if e.HasField('session_log') and e.session_log.status == e.session_log.START]
  assert starts == [3]


def test_damaged_newest_checkpoint_falls_back_to_an_older_step(uninterrupted, tmp_path, caplog):
  import shutil  # pylint: disable=import-outside-toplevel
  for damage in ('arrays', 'meta'):
    workdir = str(tmp_path / damage)
    shutil.copytree(uninterrupted, workdir)
    newest = os.path.join(workdir, 'checkpoints', '6')
    for folder, _, files in os.walk(newest):
      for name in files:
        if damage == 'arrays' and os.sep + 'variables' in folder or damage == 'meta' and name == 'metadata' \
            and folder.endswith('meta'):
          with open(os.path.join(folder, name), 'r+b') as f:
            f.truncate(max(0, os.path.getsize(f.name) // 3))
    if damage == 'arrays':
      # Inference takes the newest step that loads, and says which step that is.
      with caplog.at_level('INFO', logger='raftdvc_jax'):
        estimator = raftdvc_jax.load(workdir, which='latest')
      assert 'skipped step 6 (latest' in caplog.text and 'using step 4' in caplog.text, caplog.text
      want = orbax_io.load_variables(os.path.join(workdir, 'checkpoints', '4'))[1]
      np.testing.assert_array_equal(estimator.params['fnet']['conv1']['kernel'],
                                    want['params']['fnet']['conv1']['kernel'])
    caplog.clear()
    with caplog.at_level('INFO', logger='raftdvc_jax'):
      last = loop.train_and_evaluate(tiny_config(6), workdir, progress=False)
    assert 'skipped checkpoint step 6' in caplog.text and 'resumed from step 4' in caplog.text, caplog.text
    assert last['step'] == 6 and [r['step'] for r in records(workdir)] == list(range(1, 7))
    assert without_timing(records(workdir)) == without_timing(records(uninterrupted))
    assert os.listdir(os.path.join(workdir, 'damaged_checkpoints'))[0].startswith('6-')
    assert checkpoint.resolve(workdir, 'latest').endswith(os.sep + '6')


def test_a_non_finite_loss_stops_the_run_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
  real = loop.input_pipeline.train_batches

  def poisoned(*args, **kwargs):
    stream = real(*args, **kwargs)
    try:
      for i, batch in enumerate(stream):
        if i == 2:  # step 3
          batch = dict(batch, vol0=np.full_like(batch['vol0'], np.nan))
        yield batch
    finally:
      stream.close()

  monkeypatch.setattr(loop.input_pipeline, 'train_batches', poisoned)
  with pytest.raises(loop.NonFiniteLossError) as e:
    loop.train_and_evaluate(tiny_config(6), str(tmp_path), progress=False)
  assert 'between steps 3 and 3' in str(e.value) and 'last good checkpoint is step 2' in str(e.value)
  assert [r['step'] for r in records(str(tmp_path))] == [1, 2]  # the broken window is not recorded
  assert checkpoint.resolve(str(tmp_path), 'latest').endswith(os.sep + '2')
