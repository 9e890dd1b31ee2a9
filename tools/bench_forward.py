"""Forward and one training step of a RAFT-DVC arm, JAX against the PyTorch reference, on the same cores.

  python tools/bench_forward.py --preset s4 --size 64 --iters 12 --what forward --repeats 5   # the ratio
  python tools/bench_forward.py --preset s4 --size 48 --iters 12 --what train --repeats 5
  python tools/bench_forward.py --mode separate            # peak memory: each framework in its own process
  python tools/bench_forward.py --framework jax --dtype bfloat16             # JAX only, bf16 compute

--mode alternate (the default) builds both frameworks in one process and runs them in turn, JAX then
PyTorch, --repeats rounds after one warm-up each, so both see the same machine; it prints each side's
median and range and the median and range of the per-round ratios. --mode separate runs each framework
and measurement in its own process, so that its peak memory (max RSS) is its own, and reports medians.
JAX compile time is reported separately. Pause other work on the machine while timing.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from raftdvc_jax import benchmark  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_string('preset', 's4', 'Model preset (raftdvc_jax.model.config.PRESETS).')
flags.DEFINE_integer('size', 64, 'Cube side of the input volumes.')
flags.DEFINE_integer('iters', 12, 'Refinement iterations.')
flags.DEFINE_integer('batch', 1, 'Batch size.')
flags.DEFINE_integer('repeats', 3, 'Timed runs after the warm-up; the median is reported.')
flags.DEFINE_enum('framework', 'both', ['both', 'jax', 'torch'], 'Which implementation to time.')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'JAX compute dtype of the convolutions.')
flags.DEFINE_string('lookup', 'auto', 'JAX correlation lookup formula (model/corr.py LOOKUPS).')
flags.DEFINE_enum('what', 'both', ['both', 'forward', 'train'], 'Forward, training step, or both.')
flags.DEFINE_enum('mode', 'alternate', ['alternate', 'separate'], 'Both frameworks alternated in one process '
                  '(ratios), or each in its own process (peak memory).')


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


_time = benchmark.first_and_median


def _inputs(batch, size, seed=0):
  """A realistic synthetic bead pair and its true flow (random noise inputs can drive CPU math into denormals)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  pairs = [synthetic.make_pair(synthetic.preset('r4_64', size=size), seed + i) for i in range(batch)]
  stack = lambda key: np.stack([p[key] for p in pairs]).astype(np.float32)
  return stack('I1'), stack('I2'), stack('flow')


def build_jax(what):
  """(info, {'forward'|'train': a callable running one of them}) for the Flax model, compiled."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model.config import preset  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model.raft import RAFTDVC, init_params  # pylint: disable=import-outside-toplevel

  config = preset(FLAGS.preset)
  dtype = jnp.bfloat16 if FLAGS.dtype == 'bfloat16' else None
  model = RAFTDVC(config, lookup=FLAGS.lookup, dtype=dtype)
  variables = init_params(config, jax.random.key(0))
  vol0, vol1, flow = (jnp.asarray(a) for a in _inputs(FLAGS.batch, FLAGS.size))
  iters = FLAGS.iters
  out = {'framework': 'jax', 'device': jax.devices()[0].device_kind, 'dtype': FLAGS.dtype}

  fns = {}
  if what in ('both', 'forward'):
    forward = jax.jit(lambda v, a, b: model.apply(v, a, b, iters=iters).flow)
    start = time.perf_counter()
    compiled_forward = forward.lower(variables, vol0, vol1).compile()
    out['forward_compile_s'] = time.perf_counter() - start
    fns['forward'] = lambda: jax.block_until_ready(compiled_forward(variables, vol0, vol1))

  if what in ('both', 'train'):
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(2e-4, weight_decay=5e-5))
    params = variables['params']
    opt_state = tx.init(params)
    gt = jnp.moveaxis(flow, 1, -1)
    weights = 0.8 ** jnp.arange(iters - 1, -1, -1, dtype=jnp.float32)

    def loss_fn(p):
      flows = model.apply({'params': p}, vol0, vol1, iters=iters, train=True).flows
      per_iter = jnp.abs(flows - gt).sum(-1).mean(axis=(1, 2, 3, 4))
      return jnp.sum(weights * per_iter)

    def step(p, s):
      loss, grads = jax.value_and_grad(loss_fn)(p)
      updates, s = tx.update(grads, s, p)
      return optax.apply_updates(p, updates), s, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    start = time.perf_counter()
    compiled = step.lower(params, opt_state).compile()
    out['train_compile_s'] = time.perf_counter() - start
    state = [params, opt_state]

    def one():
      state[0], state[1], loss = compiled(*state)
      jax.block_until_ready(loss)

    fns['train'] = one
  return out, fns


def run(build, what):
  """Times one framework's callables (build_jax or build_torch), in this process; returns a dict of results."""
  out, fns = build(what)
  for name, fn in fns.items():
    _, out['forward_s' if name == 'forward' else 'train_step_s'] = _time(fn, FLAGS.repeats)
  out['peak_rss_mb'] = _peak_mb()
  return out

def build_torch(what):
  """(info, {'forward'|'train': a callable}) for the PyTorch reference (raftdvc_jax/reference/torch_raft.py)."""
  import torch  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model.config import preset  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.reference import torch_raft as ref  # pylint: disable=import-outside-toplevel

  config = preset(FLAGS.preset)
  model = ref.init_weights(ref.build(config.to_dict()), 0)
  vol0, vol1, flow = (torch.from_numpy(a) for a in _inputs(FLAGS.batch, FLAGS.size))
  vol0, vol1 = vol0[:, None], vol1[:, None]
  iters = FLAGS.iters
  out = {'framework': 'torch', 'device': f'cpu x{torch.get_num_threads()} threads', 'dtype': 'float32'}
  fns = {}
  if what in ('both', 'forward'):

    def forward():
      model.eval()
      with torch.no_grad():
        model(vol0, vol1, iters=iters, test_mode=True)

    fns['forward'] = forward
  if what in ('both', 'train'):
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=5e-5)

    def step():
      model.train()
      opt.zero_grad()
      preds = model(vol0, vol1, iters=iters)
      loss = sum(0.8 ** (iters - 1 - i) * (p - flow).abs().sum(1).mean() for i, p in enumerate(preds))
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()

    fns['train'] = step
  return out, fns

def alternate(common):
  """Both frameworks in one process, run in turn; prints each side's median and range and the ratio."""
  jax_info, jax_fns = build_jax(FLAGS.what)
  _, torch_fns = build_torch(FLAGS.what)
  print(f"{FLAGS.preset} {FLAGS.size}^3 x{FLAGS.batch}, {FLAGS.iters} iterations, JAX {FLAGS.dtype} on "
        f"{jax_info['device']}; {FLAGS.repeats} alternated rounds, median (min-max)")
  for what in jax_fns:
    times = benchmark.alternate({'jax': jax_fns[what], 'torch': torch_fns[what]}, FLAGS.repeats)
    print(json.dumps({**common, 'what': what, 'jax_s': times['jax'], 'torch_s': times['torch'],
                      'jax_compile_s': jax_info.get(f'{what}_compile_s')}), flush=True)
    print(f"{what}: JAX {benchmark.spread(times['jax'])}, PyTorch {benchmark.spread(times['torch'])}, "
          f"JAX speed {benchmark.ratio_spread(times['torch'], times['jax'])} PyTorch's", flush=True)


def main(argv):
  del argv
  from raftdvc_jax import cli  # pylint: disable=import-outside-toplevel
  cli.quiet_logs()
  common = {'preset': FLAGS.preset, 'size': FLAGS.size, 'iters': FLAGS.iters, 'batch': FLAGS.batch}
  if FLAGS.framework == 'both' and FLAGS.mode == 'alternate':
    alternate(common)
    return
  if FLAGS.framework != 'both':
    result = run(build_jax if FLAGS.framework == 'jax' else build_torch, FLAGS.what)
    print(json.dumps({**common, **result}))
    return
  rows = []
  for framework in ('jax', 'torch'):
    for what in (['forward', 'train'] if FLAGS.what == 'both' else [FLAGS.what]):
      # One process per framework and measurement, so that max RSS is that measurement's peak.
      cmd = [sys.executable, __file__] + [a for a in sys.argv[1:] if not a.startswith(('--framework', '--what', '--mode'))]
      cmd += [f'--framework={framework}', f'--what={what}']
      line = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
      rows.append(json.loads(line.splitlines()[-1]))
      print(json.dumps(rows[-1]), flush=True)
  by = {(r['framework'], 'train' if 'train_step_s' in r else 'forward'): r for r in rows}
  print(f"\n| {FLAGS.preset} {FLAGS.size}^3 x{FLAGS.batch}, {FLAGS.iters} iters | forward s | train step s | "
        'peak RSS fwd / train MB | compile fwd / train s |\n|---|---|---|---|---|')
  for framework in ('jax', 'torch'):
    f, t = by.get((framework, 'forward'), {}), by.get((framework, 'train'), {})
    fmt = lambda d, k: f'{d[k]:.2f}' if k in d else '-'
    print(f"| {framework} ({FLAGS.dtype if framework == 'jax' else 'float32'}) | {fmt(f, 'forward_s')} | "
          f"{fmt(t, 'train_step_s')} | {f.get('peak_rss_mb', 0):.0f} / {t.get('peak_rss_mb', 0):.0f} | "
          f"{fmt(f, 'forward_compile_s')} / {fmt(t, 'train_compile_s')} |")
  if ('torch', 'forward') in by and ('jax', 'forward') in by:
    print(f"\nforward speed-up {by['torch', 'forward']['forward_s'] / by['jax', 'forward']['forward_s']:.2f}x")
  if ('torch', 'train') in by and ('jax', 'train') in by:
    print(f"train-step speed-up {by['torch', 'train']['train_step_s'] / by['jax', 'train']['train_step_s']:.2f}x")


if __name__ == '__main__':
  from raftdvc_jax import cli  # pylint: disable=g-import-not-at-top
  cli.start(main)  # --help exits 0
