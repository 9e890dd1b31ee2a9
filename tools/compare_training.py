r"""Trains the JAX trainer and the PyTorch reference side by side from one initial state on one batch stream.

  python tools/compare_training.py --output_dir /tmp/cmp --steps 300                 # small arm, 24^3
  python tools/compare_training.py --output_dir /tmp/cmp --preset s4 --size 32 --steps 400 --lr 4e-4

Three runs from the same PyTorch initialisation (RAFT-DVC's), mapped into Flax: `torch` (raftdvc_jax/reference/torch_raft.py
with AdamW, OneCycleLR, clip_grad_norm_ and the gamma-0.8 sequence loss), `jax` (raftdvc_jax.train.step, the
same recipe) and, with --corr_weight > 0, `jax+corr` (plus the auxiliary correlation loss). Each step's loss and
train EPE, and the validation EPE every --eval_every steps beside the EPE of predicting no motion, go to
OUTPUT_DIR/compare.jsonl and OUTPUT_DIR/compare.png. Needs torch (the [torch] extra).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app
from absl import flags

_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Directory for compare.jsonl and compare.png.')
_PRESET = flags.DEFINE_string('preset', 'small', "'small' (the smoke arm's widths) or a model preset (s2, s4, s8).")
_SIZE = flags.DEFINE_integer('size', 24, 'Cube side of the training pairs.')
_STEPS = flags.DEFINE_integer('steps', 300, 'Optimizer steps per run.')
_BATCH = flags.DEFINE_integer('batch', 2, 'Pairs per step.')
_ITERS = flags.DEFINE_integer('iters', 4, 'Update iterations in training and validation.')
_LR = flags.DEFINE_float('lr', 1e-3, 'OneCycle peak learning rate.')
_CORR_WEIGHT = flags.DEFINE_float('corr_weight', 1.0, 'Weight of the correlation loss in the jax+corr run; 0: skip.')
_DEFORMATION = flags.DEFINE_string('deformation', 'translation:0.5,affine:0.5', 'Synthetic family mix.')
_DISP = flags.DEFINE_list('disp', ['1.0', '3.0'], 'Displacement band (min, max) of the pairs, voxels.')
_VAL_SIZE = flags.DEFINE_integer('val_size', 8, 'Validation pairs.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 25, 'Validate every this many steps.')
_RUNS = flags.DEFINE_list('runs', ['torch', 'jax', 'jax+corr'], "Which runs: torch, torch@1 (torch on one thread: "
                          "the same maths summed in another order), jax, jax+corr.")
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the initialisation and the batch stream.')
flags.mark_flags_as_required(['output_dir'])


def _model_config():
  from raftdvc_jax.model.config import ModelConfig, preset  # pylint: disable=import-outside-toplevel
  if _PRESET.value == 'small':
    return ModelConfig(encoder_type='1/4', feature_dim=32, hidden_dim=32, context_dim=32, corr_levels=2,
                       corr_radius=3, iters=_ITERS.value)
  return preset(_PRESET.value).replace(iters=_ITERS.value)


def _pairs(cfg, seed, count):
  from raftdvc_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  seed = tuple(seed) if isinstance(seed, (tuple, list)) else (seed,)
  pairs = [synthetic.make_pair(cfg, (*seed, i)) for i in range(count)]
  return {'vol0': np.stack([p['I1'] for p in pairs]), 'vol1': np.stack([p['I2'] for p in pairs]),
          'flow': np.stack([p['flow'] for p in pairs]).astype(np.float32)}


def _schedule_cfg():
  return {'name': 'onecycle', 'pct_start': 0.2, 'anneal': 'cos', 'div_factor': 25.0, 'final_div_factor': 1e4}


def _run_torch(config, init_state, batches, val, log):
  import torch  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.reference import torch_raft as ref  # pylint: disable=import-outside-toplevel
  model = ref.build(config.to_dict())
  model.load_state_dict({k: torch.from_numpy(v) for k, v in init_state.items()})
  opt = torch.optim.AdamW(model.parameters(), lr=_LR.value, weight_decay=5e-5)
  sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=_LR.value, total_steps=_STEPS.value, pct_start=0.2,
                                              anneal_strategy='cos', div_factor=25.0, final_div_factor=1e4,
                                              cycle_momentum=False)  # as RAFT-DVC: beta1 stays 0.9
  t = lambda a: torch.from_numpy(a)
  for step, batch in enumerate(batches, 1):
    model.train()
    flows = model(t(batch['vol0'][:, None]), t(batch['vol1'][:, None]), iters=config.iters)
    gt = t(batch['flow'])
    loss = sum(0.8 ** (len(flows) - 1 - i) * (f - gt).abs().sum(1).mean() for i, f in enumerate(flows))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    epe = float((flows[-1] - gt).square().sum(1).sqrt().mean())
    record = {'step': step, 'loss': float(loss), 'train_epe': epe}
    if step % _EVAL_EVERY.value == 0 or step == len(batches):
      model.eval()
      with torch.no_grad():
        out = model(t(val['vol0'][:, None]), t(val['vol1'][:, None]), iters=config.iters, test_mode=True)[1]
      record['val_epe'] = float((out - t(val['flow'])).square().sum(1).sqrt().mean())
    log(record)


def _run_jax(config, variables, batches, val, log, corr_weight):
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from raftdvc_jax.model.raft import RAFTDVC
  from raftdvc_jax.train import schedule as schedule_lib, state as state_lib, step as step_lib
  schedule = schedule_lib.from_config(_schedule_cfg(), _STEPS.value, _LR.value)
  tx = state_lib.optimizer(schedule, 5e-5, 1.0)
  model = RAFTDVC(config)
  train_step = jax.jit(step_lib.make_train_step(model, tx, schedule, {'gamma': 0.8, 'corr_weight': corr_weight}))
  predict = jax.jit(lambda p, a, b: model.apply({'params': p}, a, b).flow)
  state = state_lib.create(config, tx, 0, variables)
  for step, batch in enumerate(batches, 1):
    state, metrics = train_step(state, jax.tree.map(lambda x: jnp.asarray(x)[None], batch))
    record = {'step': step, 'loss': float(metrics['loss']), 'train_epe': float(metrics['epe'])}
    if 'corr_loss' in metrics:
      record['corr_loss'] = float(metrics['corr_loss'])
    if step % _EVAL_EVERY.value == 0 or step == len(batches):
      flow = np.moveaxis(np.asarray(predict(state.params, val['vol0'], val['vol1'])), -1, 1)
      record['val_epe'] = float(np.sqrt(np.square(flow - val['flow']).sum(1)).mean())
    log(record)


def _plot(records, zero, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
  for run in dict.fromkeys(r['run'] for r in records):
    rows = [r for r in records if r['run'] == run]
    steps = np.array([r['step'] for r in rows])
    loss = np.array([r['loss'] - r.get('corr_loss', 0.0) * _CORR_WEIGHT.value for r in rows])
    k = max(1, len(loss) // 30)  # running mean: single steps are noisy
    a.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, 'valid'), label=run)
    val = [(r['step'], r['val_epe']) for r in rows if 'val_epe' in r]
    b.plot(*zip(*val), 'o-', markersize=3, label=run)
  b.axhline(zero, color='k', ls='--', label='no motion')
  a.set(xlabel='step', ylabel='sequence loss (running mean)', title='training loss')
  b.set(xlabel='step', ylabel='mean EPE [voxel]', title='validation EPE', ylim=(0, None))
  a.legend()
  b.legend()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # pylint: disable=import-outside-toplevel
  from raftdvc_jax import cli
  from raftdvc_jax.convert import mapping
  from raftdvc_jax.data import synthetic
  from raftdvc_jax.reference import torch_raft as ref
  out_dir = _OUTPUT_DIR.value
  os.makedirs(out_dir, exist_ok=True)
  config = _model_config()
  lo, hi = (float(v) for v in _DISP.value)
  data_cfg = synthetic.SyntheticConfig(size=_SIZE.value, particle_radius=2.0, density=4.8, disp_min=lo,
                                       disp_max=hi, deformation=_DEFORMATION.value)
  batches = [_pairs(data_cfg, (_SEED.value, 1, s), _BATCH.value) for s in range(_STEPS.value)]
  val = _pairs(data_cfg, (_SEED.value, 2), _VAL_SIZE.value)
  zero = float(np.sqrt(np.square(val['flow']).sum(1)).mean())
  init = {k: v.numpy().copy() for k, v in ref.init_weights(ref.build(config.to_dict()), _SEED.value)
          .state_dict().items()}
  records = []
  path = os.path.join(out_dir, 'compare.jsonl')
  with open(path, 'w') as f:
    for run in _RUNS.value:
      def log(record, run=run):
        record = {'run': run, **record, 'val_zero_epe': zero}
        records.append(record)
        f.write(json.dumps(record) + '\n')
        f.flush()
        if 'val_epe' in record:
          print(f"{run:9s} step {record['step']:5d}  loss {record['loss']:.4g}  val_epe {record['val_epe']:.4f}"
                f'  (no motion {zero:.4f})', flush=True)
      if run in ('torch', 'torch@1'):
        import torch  # pylint: disable=import-outside-toplevel
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if run == 'torch@1' else threads)  # another summation order, same maths
        cli.run(lambda: _run_torch(config, init, batches, val, log))
        torch.set_num_threads(threads)
      elif run in ('jax', 'jax+corr'):
        weight = _CORR_WEIGHT.value if run == 'jax+corr' else 0.0
        cli.run(lambda: _run_jax(config, mapping.from_torch(init, config), batches, val, log, weight))
      else:
        cli.fail(f'--runs: unknown run {run!r} (torch, torch@1, jax, jax+corr)')
  _plot(records, zero, os.path.join(out_dir, 'compare.png'))
  print(os.path.join(out_dir, 'compare.png'))


if __name__ == '__main__':
  app.run(main)
