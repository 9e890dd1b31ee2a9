r"""Training-step speed and peak memory of the trainer's step, JAX against the PyTorch reference.

  python tools/bench_train.py                                  # s4 arm, 64^3, batch 1 and 8, both frameworks
  python tools/bench_train.py --batches=1 --steps=3 --framework=jax --compute_dtype=bfloat16

The JAX side is raftdvc_jax.train.step exactly as train.py runs it: one jitted step over a mesh of all devices
(state replicated and donated, batch sharded), clip + AdamW + OneCycle, the gamma-0.8 sequence loss over every
iteration. The PyTorch side is raftdvc_jax/reference/torch_raft.py with the RAFT-DVC recipe (AdamW, OneCycleLR,
clip_grad_norm_, the same loss). Every (framework, batch) runs in its own process, so peak RSS is its own; the
JAX figure includes compilation. Timings are the median of --steps steps after one warm-up step (compilation
for JAX, reported separately). Prints JSON lines and a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from raftdvc_jax import benchmark  # pylint: disable=g-import-not-at-top

_PRESET = flags.DEFINE_string('preset', 's4', 'Model preset (raftdvc_jax.model.config.PRESETS).')
_SIZE = flags.DEFINE_integer('size', 64, 'Cube side of the training volumes.')
_BATCHES = flags.DEFINE_list('batches', ['1', '8'], 'Batch sizes to time.')
_STEPS = flags.DEFINE_integer('steps', 2, 'Timed steps after the warm-up step; the median is reported.')
_FRAMEWORK = flags.DEFINE_enum('framework', 'both', ['both', 'jax', 'torch'], 'Which implementation to time.')
_COMPUTE_DTYPE = flags.DEFINE_enum('compute_dtype', 'float32', ['float32', 'bfloat16'], 'JAX compute dtype.')
_REMAT = flags.DEFINE_bool('remat', False, 'JAX: recompute each iteration in the backward pass.')
_ACCUM = flags.DEFINE_integer('accum', 1, 'Split each batch into this many accumulation steps (both frameworks); '
                              'batch 8 with --accum=8 needs the memory of batch 1.')
_BATCH = flags.DEFINE_integer('batch', None, 'Internal: the single batch size of a child process.')


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _batch(batch: int, size: int):
  """A fixed batch of synthetic bead pairs (made once; data loading is not what is timed)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  cfg = synthetic.preset('r4_64', size=size)
  pairs = [synthetic.make_pair(cfg, (0, i)) for i in range(batch)]
  return {'vol0': np.stack([p['I1'] for p in pairs]), 'vol1': np.stack([p['I2'] for p in pairs]),
          'flow': np.stack([p['flow'] for p in pairs])}


_timed = benchmark.first_and_median


def run_jax(batch: int) -> dict:
  """Times raftdvc_jax.train.step's jitted, sharded train step."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from raftdvc_jax.model.config import preset
  from raftdvc_jax.model.raft import RAFTDVC
  from raftdvc_jax.train import schedule, state as state_lib, step as step_lib

  config = preset(_PRESET.value)
  dtype = jnp.bfloat16 if _COMPUTE_DTYPE.value == 'bfloat16' else None
  model = RAFTDVC(config, dtype=dtype, remat=_REMAT.value)
  sched = schedule.onecycle(75_000, 2e-4, 0.2, 'cos')
  tx = state_lib.optimizer(sched, 5e-5, 1.0)
  mesh = step_lib.make_mesh()
  train_step = step_lib.jit_train_step(step_lib.make_train_step(model, tx, sched, {'gamma': 0.8}), mesh)
  state = jax.device_put(state_lib.create(config, tx, 0), step_lib.replicated(mesh))
  host = step_lib.split_accum(_batch(batch, _SIZE.value), _ACCUM.value)
  device_batch = step_lib.to_device(host, step_lib.batch_sharding(mesh))
  start = time.perf_counter()
  compiled = train_step.lower(state, device_batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  holder = [state]

  def one():
    holder[0], metrics = compiled(holder[0], device_batch)
    jax.block_until_ready(metrics['loss'])

  first, median = _timed(one, _STEPS.value)
  out = {'framework': 'jax', 'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
         'dtype': _COMPUTE_DTYPE.value, 'remat': _REMAT.value, 'accum': _ACCUM.value, 'compile_s': compile_s,
         'first_step_s': first, 'step_s': median}
  if memory is not None:
    out['xla_temp_mb'] = memory.temp_size_in_bytes / 2 ** 20
  return out


def run_torch(batch: int) -> dict:
  """Times the PyTorch reference with RAFT-DVC's training step."""
  # pylint: disable=import-outside-toplevel
  import torch
  from raftdvc_jax.model.config import preset
  from raftdvc_jax.reference import torch_raft as ref

  config = preset(_PRESET.value)
  model = ref.init_weights(ref.build(config.to_dict()), 0).train()
  b = {k: torch.from_numpy(v) for k, v in _batch(batch, _SIZE.value).items()}
  accum = _ACCUM.value
  micro = [(b['vol0'][i::accum][:, None], b['vol1'][i::accum][:, None], b['flow'][i::accum]) for i in range(accum)]
  opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=5e-5)
  sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-4, total_steps=75_000, pct_start=0.2,
                                              cycle_momentum=False)
  iters = config.iters

  def one():
    opt.zero_grad()
    for vol0, vol1, flow in micro:
      preds = model(vol0, vol1, iters=iters)
      loss = sum(0.8 ** (iters - 1 - i) * (p - flow).abs().sum(1).mean() for i, p in enumerate(preds))
      (loss / accum).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()

  first, median = _timed(one, _STEPS.value)
  return {'framework': 'torch', 'device': f'cpu, {torch.get_num_threads()} threads', 'dtype': 'float32',
          'accum': accum, 'first_step_s': first, 'step_s': median}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  common = {'preset': _PRESET.value, 'size': _SIZE.value}
  if _BATCH.value is not None:  # a child process: one measurement
    result = (run_jax if _FRAMEWORK.value == 'jax' else run_torch)(_BATCH.value)
    print(json.dumps({**common, 'batch': _BATCH.value, **result, 'peak_rss_mb': _peak_mb()}), flush=True)
    return
  frameworks = ['jax', 'torch'] if _FRAMEWORK.value == 'both' else [_FRAMEWORK.value]
  rows = []
  for batch in (int(b) for b in _BATCHES.value):
    for framework in frameworks:
      cmd = [sys.executable, os.path.abspath(__file__), f'--framework={framework}', f'--batch={batch}',
             f'--preset={_PRESET.value}', f'--size={_SIZE.value}', f'--steps={_STEPS.value}',
             f'--compute_dtype={_COMPUTE_DTYPE.value}', f'--remat={_REMAT.value}', f'--accum={_ACCUM.value}']
      proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
      if proc.returncode:
        print(f'error: {framework} batch {batch} failed:\n{proc.stderr[-2000:]}', file=sys.stderr)
        sys.exit(1)
      rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
      print(json.dumps(rows[-1]), flush=True)
  print(f'\n| {_PRESET.value} {_SIZE.value}^3, train step | batch (x accum) | step s | steps/s | samples/s | '
        'peak RSS MB | compile s |\n|---|---|---|---|---|---|---|')
  for r in rows:
    label = f"{r['framework']} ({r['dtype']}{', remat' if r.get('remat') else ''})"
    compile_s = f"{r['compile_s']:.1f}" if 'compile_s' in r else '-'
    batch = f"{r['batch']}" + (f" ({r['batch'] // r['accum']} x {r['accum']})" if r['accum'] > 1 else '')
    print(f"| {label} | {batch} | {r['step_s']:.2f} | {1 / r['step_s']:.3f} | {r['batch'] / r['step_s']:.3f} | "
          f"{r['peak_rss_mb']:.0f} | {compile_s} |")
  by = {(r['framework'], r['batch']): r for r in rows}
  for batch in (int(b) for b in _BATCHES.value):
    if ('jax', batch) in by and ('torch', batch) in by:
      print(f"batch {batch}: JAX step is {by['torch', batch]['step_s'] / by['jax', batch]['step_s']:.2f}x "
            "PyTorch's speed")


if __name__ == '__main__':
  from raftdvc_jax import cli  # pylint: disable=g-import-not-at-top
  cli.start(main)  # --help exits 0
