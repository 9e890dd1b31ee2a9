"""The data-parallel train step on 2 simulated CPU devices against one device (with 2 accumulation steps).

Runs in a subprocess: XLA_FLAGS must be set before JAX starts.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r'''
import json
import jax
import numpy as np
jax.config.update('jax_disable_most_optimizations', True)  # two programs compiled for one step each
from raftdvc_jax.data import synthetic
from raftdvc_jax.model.config import ModelConfig
from raftdvc_jax.model.raft import RAFTDVC
from raftdvc_jax.train import schedule, state as state_lib, step as step_lib

assert jax.device_count() == 2, jax.devices()
cfg = ModelConfig(encoder_type='1/8', feature_dim=16, hidden_dim=16, context_dim=16, corr_levels=2,
                  corr_radius=2, iters=2)
model = RAFTDVC(cfg)
sched = schedule.constant(1e-3)
tx = state_lib.optimizer(sched, 5e-5, 1.0)
syn = synthetic.SyntheticConfig(size=16, deformation='translation', disp_min=0.5, disp_max=1.5)
pairs = [synthetic.make_pair(syn, (0, i)) for i in range(2)]
batch = {'vol0': np.stack([p['I1'] for p in pairs]), 'vol1': np.stack([p['I2'] for p in pairs]),
         'flow': np.stack([p['flow'] for p in pairs])}
initial = jax.device_get(state_lib.create(cfg, tx, 0))
out = {}
for name, devices, accum in (('two_devices', jax.devices(), 1), ('one_device', jax.devices()[:1], 2)):
  mesh = step_lib.make_mesh(devices)
  train_step = step_lib.jit_train_step(step_lib.make_train_step(model, tx, sched, {'gamma': 0.8}), mesh)
  state = jax.tree.map(lambda x: jax.device_put(x, step_lib.replicated(mesh)), initial)
  device_batch = step_lib.to_device(step_lib.split_accum(batch, accum), step_lib.batch_sharding(mesh))
  state, metrics = train_step(state, device_batch)
  vol0 = device_batch['vol0']
  out[name] = {
      'loss': float(metrics['loss']), 'grad_norm': float(metrics['grad_norm']), 'epe': float(metrics['epe']),
      'batch_devices': len(vol0.sharding.device_set), 'batch_shard': list(vol0.sharding.shard_shape(vol0.shape)),
      'state_devices': len(state.params['fnet']['conv1']['kernel'].sharding.device_set),
      'state_replicated': bool(state.params['fnet']['conv1']['kernel'].sharding.is_fully_replicated),
      'params': [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)[:6]],
      'param_delta': float(sum(np.abs(np.asarray(a) - np.asarray(b)).sum()
                               for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(initial.params)))),
  }
print('RESULT ' + json.dumps(out))
'''


def test_two_devices_match_one_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu',
             PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run([sys.executable, '-c', SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1]
  result = json.loads(line[len('RESULT '):])
  two, one = result['two_devices'], result['one_device']
  # The batch really is split over both devices (one sample each) and the state is replicated on both.
  assert two['batch_devices'] == 2 and two['batch_shard'][:2] == [1, 1]
  assert two['state_devices'] == 2 and two['state_replicated']
  assert one['batch_devices'] == 1 and one['batch_shard'][:2] == [2, 1]
  # Same loss, gradient norm and update as one device taking the same batch in two accumulation steps.
  for key in ('loss', 'grad_norm', 'epe'):
    assert abs(two[key] - one[key]) <= 1e-5 * abs(one[key]), (key, two[key], one[key])
  assert two['param_delta'] > 0
  # Adam moves every weight by about lr = 1e-3; the two updates agree to a small fraction of that.
  for a, b in zip(two['params'], one['params']):
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5
