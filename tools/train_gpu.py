r"""Continues s4-starter on one GPU for a fixed number of minutes (configs/s4_starter.py:gpu); never part of CI.

  python tools/train_gpu.py --minutes=7 --run_dir=/tmp/s4_gpu --export=/tmp/s4_gpu/export

Two train.py runs, so that the learning-rate schedule fits the minutes without knowing the GPU's speed first:
  a  constant lr from the shipped weights until --probe_s seconds of timed steps, stopped by SIGTERM (it
     checkpoints); its steps/s sizes run b;
  b  a OneCycle run from a's last step with as many steps as the time left holds, checkpointed 4 times
     (validated too with --validate; off by default, see its help).
Then it prints samples/s (and any validation records), and exports b's best step, or without validation its
last (params only, --iters for inference, the crop size as its recorded tile). Compare it with the shipped
weights on the CPU:
  python tools/eval_weights.py --checkpoint EXPORT --size 64 --per_cell 2 --suites synthetic,blobs
--quick runs the same on a CPU with a narrow model and 16^3 crops (checks the plumbing only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags

from raftdvc_jax import cli
from raftdvc_jax.train import curves

_MINUTES = flags.DEFINE_float('minutes', 7.0, 'Wall-clock minutes for both runs (compilation included).')
_RUN_DIR = flags.DEFINE_string('run_dir', '/tmp/s4_gpu', 'Directory for the two runs (a/ and b/).')
_EXPORT = flags.DEFINE_string('export', None, 'Export b\'s best step here (default RUN_DIR/export).')
_PROBE_S = flags.DEFINE_float('probe_s', 60.0, 'Seconds of timed steps in run a.')
_RESERVE_S = flags.DEFINE_float('reserve_s', 45.0, 'Seconds kept back for validation, checkpoints and export.')
_ITERS = flags.DEFINE_integer('iters', 12, 'Inference iterations stored with the exported weights.')
_QUICK = flags.DEFINE_bool('quick', False, 'Narrow model, 16^3 crops, batch 2, 2 workers: a CPU plumbing check.')
_VALIDATE = flags.DEFINE_bool('validate', False, 'Validate run b in training. Off by default: compiling the '
                              'validation step crashed XLA-GPU (jax 0.11.2, Triton GEMM fusion) on an H200.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Delete runs a/ and b/ left in --run_dir by an earlier call '
                               'and replace --export.')
_OVERRIDES = flags.DEFINE_multi_string('set', [], 'Extra KEY=VALUE config overrides for both runs '
                                       '(e.g. --set data.num_workers=14).')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs', 's4_starter.py') + ':gpu'
QUICK = ['model.feature_dim=16', 'model.hidden_dim=16', 'model.context_dim=16', 'model.iters=2',
         'data.synthetic.size=16', 'data.num_workers=2', 'train.batch_size=2', 'data.val_size=2',
         'init_from=', 'train.log_every=2']


def _records(workdir):
  """The run's metrics records so far ([] before its first, or while a line is half-written)."""
  try:
    return curves.read_metrics(workdir)
  except (OSError, ValueError):
    return []


def _speed(workdir) -> float:
  """Median steps/s of the timed log windows of a run."""
  rates = sorted(r['steps_per_s'] for r in _records(workdir) if r.get('steps_per_s'))
  return rates[len(rates) // 2] if rates else 0.0


def _command(workdir, overrides):
  sets = (QUICK if _QUICK.value else []) + list(overrides) + list(_OVERRIDES.value)
  return [sys.executable, os.path.join(ROOT, 'train.py'), f'--config={CONFIG}', f'--workdir={workdir}',
          *[f'--config.{s}' for s in sets]]


def _stop(proc, grace_s=60.0):
  """SIGTERM (the loop checkpoints and exits at the next step), then SIGKILL after grace_s."""
  if proc.poll() is None:
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(grace_s)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def _run_a(workdir) -> tuple[float, float]:
  """Constant-lr run until probe_s seconds of timed steps; returns (steps/s, seconds to its first record)."""
  start = time.monotonic()
  proc = subprocess.Popen(_command(workdir, ['train.schedule.name=constant', 'train.num_steps=1000000',
                                             'train.checkpoint_every=1000000', 'data.val_size=0']))
  first = None
  while proc.poll() is None:
    time.sleep(2)
    timed = [r for r in _records(workdir) if r.get('steps_per_s')]
    if timed and first is None:
      first = time.monotonic()
    if first is not None and time.monotonic() - first >= _PROBE_S.value:
      break
  _stop(proc)
  if proc.returncode not in (0, -signal.SIGTERM) and not _records(workdir):
    cli.fail(f'run a failed (exit {proc.returncode}); see its output above')
  return _speed(workdir), (first or time.monotonic()) - start


def _run_b(workdir, init_from, steps: int, deadline: float) -> None:
  every = max(steps // 4, 1)
  sets = [f'init_from={init_from}', f'train.num_steps={steps}', f'train.eval_every={every}',
          f'train.checkpoint_every={every}'] + ([] if _VALIDATE.value else ['data.val_size=0'])
  proc = subprocess.Popen(_command(workdir, sets))
  try:
    proc.wait(max(deadline - time.monotonic(), 1.0))
  except subprocess.TimeoutExpired:
    print('run b is past its time: stopping it (it checkpoints)', flush=True)
  _stop(proc)


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_logs()
  import jax  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  print(f'device: {dev.platform} {dev.device_kind}; jax {jax.__version__}', flush=True)
  start = time.monotonic()
  deadline = start + 60 * _MINUTES.value
  run_a, run_b = os.path.join(_RUN_DIR.value, 'a'), os.path.join(_RUN_DIR.value, 'b')
  export_dir = _EXPORT.value or os.path.join(_RUN_DIR.value, 'export')
  if os.path.exists(export_dir) and not _OVERWRITE.value:
    cli.fail(f'{export_dir}: exists; pass --overwrite to replace it, or another --export')
  for run in (run_a, run_b):  # a left-over run would resume with another schedule and skew the timing
    if os.path.exists(run):
      if not _OVERWRITE.value:
        cli.fail(f'{run}: exists from an earlier call; pass --overwrite to delete it, or another --run_dir')
      shutil.rmtree(run)
  sps, compile_s = _run_a(run_a)
  if sps <= 0:
    cli.fail('run a logged no timed steps; give it more --probe_s')
  step_a = max((r['step'] for r in _records(run_a)), default=0)
  left = deadline - time.monotonic() - compile_s - _RESERVE_S.value
  steps = int(sps * left)
  print(f'run a: {step_a} steps, {sps:.3f} steps/s, first record after {compile_s:.0f} s; '
        f'run b: {steps} steps in {left:.0f} s', flush=True)
  if steps < 20:
    cli.fail(f'only {steps} steps fit in the time left; give more --minutes')
  _run_b(run_b, run_a, steps, deadline + _RESERVE_S.value)

  records = _records(run_b)
  with open(os.path.join(run_b, 'config.json')) as f:
    config = json.load(f)
  batch, size = config['train']['batch_size'], config['data']['synthetic']['size']
  print(f'run b: {max((r["step"] for r in records), default=0)} steps, {_speed(run_b) * batch:.1f} samples/s '
        f'(batch {batch}); run a: {sps * batch:.1f} samples/s', flush=True)
  for r in records:
    if 'val_epe' in r:
      print(f'  step {r["step"]}: val_epe {r["val_epe"]:.4f}  val_zero_epe {r["val_zero_epe"]:.4f}  '
            f'ratio {r["val_epe"] / r["val_zero_epe"]:.3f}', flush=True)
  from raftdvc_jax.train import export  # pylint: disable=import-outside-toplevel
  out = export.export_run(run_b, export_dir, 'best', _ITERS.value, overwrite=_OVERWRITE.value,
                          notes={'inference': {'tile': size, 'overlap': 0.5}})
  print(f'exported: {out} ({time.monotonic() - start:.0f} s in all)', flush=True)


if __name__ == '__main__':
  cli.start(main)
