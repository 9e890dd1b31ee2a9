"""configs/*.py: each loads, validates, documents its command, and carries its recipe; train.py's CLI errors."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from raftdvc_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3] + '_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_configs_exist():
  assert {os.path.basename(p) for p in CONFIGS} >= {'raftdvc.py', 'volraft.py', 'smoke.py', 's4_starter.py'}


ARGS = {'raftdvc.py': ('s2', 's4', 's8'), 's4_starter.py': ('translation', 'mix', 'gpu'),
        's8_starter.py': ('translation', 'mix')}
VARIANTS = [(p, arg) for p in CONFIGS for arg in ARGS.get(os.path.basename(p), (None,))]


@pytest.mark.parametrize('path,arg', VARIANTS, ids=lambda v: os.path.basename(v) if v and '/' in v else str(v))
def test_config_validates_and_documents_its_command(path, arg):
  module = load(path)
  config = module.get_config(arg) if arg else module.get_config()
  model = loop.validate(config)
  spec = os.path.basename(path) + (f':{arg}' if arg else '')
  assert f'python train.py --config=configs/{spec}' in module.__doc__
  assert {'num_steps', 'batch_size', 'lr', 'eval_every', 'checkpoint_every', 'log_every', 'seed'} <= set(config.train)
  assert 'init_from' in config and model.iters == config.model.iters


@pytest.mark.parametrize('arm,stride,accum', [('s2', 2, 1), ('s4', 4, 1), ('s8', 8, 2)])
def test_raftdvc_arm_recipe(arm, stride, accum):
  c = load(os.path.join(ROOT, 'configs', 'raftdvc.py')).get_config(arm)
  assert loop.validate(c).stride == stride and c.model.corr_levels == 2 and c.model.corr_radius == 4
  t = c.train
  assert (t.lr, t.weight_decay, t.clip_norm, t.batch_size, t.grad_accum, c.model.iters) == (2e-4, 5e-5, 1.0, 8,
                                                                                             accum, 12)
  assert dict(t.schedule) == dict(name='onecycle', pct_start=0.2, anneal='cos', div_factor=25.0,
                                  final_div_factor=1e4, steps_per_epoch=1)
  assert (t.loss.gamma, t.loss.components) == (0.8, 'sum')
  assert c.data.augment.flip_prob == 0.5 and tuple(map(tuple, c.data.augment.rot90_planes)) == ((1, 2),)


def test_volraft_recipe():
  c = load(os.path.join(ROOT, 'configs', 'volraft.py')).get_config()
  assert loop.validate(c).volraft and c.model.corr_levels == 4 and c.model.corr_radius == 3
  s = c.train.schedule
  assert (s.name, s.base_lr, c.train.lr, s.step_size_up, s.step_size_down, s.mode, s.steps_per_epoch) == (
      'cyclic', 2e-5, 2e-4, 500, 1500, 'triangular2', 32)
  assert (c.train.loss.components, c.train.loss.max_flow, c.train.batch_size) == ('mean', 24.0, 18)
  assert c.data.augment.flip_prob == 0 and not c.data.augment.rot90_planes


def test_train_cli_errors_are_one_line(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, check=False)
  workdir = tmp_path / 'run'
  proc = run('--config=configs/missing.py', f'--workdir={workdir}')
  assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
      "error: configs/missing.py: cannot load --config: [Errno 2] No such file or directory: 'configs/missing.py'"]
  proc = run('--config=configs/smoke.py', f'--workdir={workdir}', '--config.train.grad_accum=3')
  assert proc.returncode == 1 and proc.stderr.strip() == (
      'error: config.train.batch_size 2 is not a multiple of grad_accum 3')
  # A mistyped key names the closest valid one; a broken config file names its file and line.
  proc = run('--config=configs/smoke.py', f'--workdir={workdir}', '--config.train.num_stepz=5')
  assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
      "error: --config.train.num_stepz: config.train has no key 'num_stepz'; did you mean config.train.num_steps?"]
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config():\n  return dict(\n')
  proc = run(f'--config={broken}', f'--workdir={workdir}')
  assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert proc.stderr.startswith(f'error: {broken}:2: cannot load the config: SyntaxError'), proc.stderr
  failing = tmp_path / 'failing.py'
  failing.write_text('def get_config():\n  return {}["model"]\n')
  proc = run(f'--config={failing}', f'--workdir={workdir}')
  assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert proc.stderr.startswith(f'error: {failing}:2: cannot load the config: KeyError'), proc.stderr
  assert not workdir.exists()
  proc = run('--help')
  assert proc.returncode == 0, proc.stderr
  assert 'raftdvc-train --config=configs/smoke.py' in proc.stdout and '--workdir' in proc.stdout


def test_train_gpu_tool_help_and_the_gpu_phase():
  """tools/train_gpu.py documents itself (--help exits 0); the phase it runs trains 64^3 crops from s4-starter."""
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train_gpu.py'), '--help'],
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0 and '--minutes' in proc.stdout, proc.stderr
  config = load(os.path.join(ROOT, 'configs', 's4_starter.py')).get_config('gpu')
  assert config.init_from == 's4-starter' and config.data.synthetic.size == 64
  assert config.train.compute_dtype == 'bfloat16' and config.train.batch_size == 16
