"""The same answer on 1 or 2 processes (jax.distributed over 127.0.0.1, Gloo collectives on CPU).

Run as a script, this file is the driver each process executes:
  python tests/infer/test_distributed.py train|infer WORKDIR NUM_PROCESSES PROCESS_ID PORT
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 600


def tiny_train_config(num_steps=2):
  """test_train_loop's tiny smoke config: fresh pairs, batch 2, no validation, a small constant-ish lr."""
  from tests.train.test_loop import tiny_config  # pylint: disable=import-outside-toplevel
  c = tiny_config(num_steps)
  c.data.update(train_size=0, val_size=0)  # augmentation must follow the global position
  # A small learning rate: AdamW turns float-rounding noise in near-zero gradient components into steps of
  # up to lr, and 1e-3 made the 1- and 2-process losses drift apart by 6e-4 (relative) within two steps.
  c.train.update(lr=1e-4, log_every=1, checkpoint_every=100)
  c.train.schedule = dict(name='onecycle', pct_start=0.2, anneal='cos', div_factor=25.0, final_div_factor=1e4,
                          steps_per_epoch=1)
  return c


def tiny_model_config():
  from raftdvc_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  return ModelConfig(encoder_type='1/8', feature_dim=16, hidden_dim=16, context_dim=16, corr_levels=2,
                     corr_radius=2, iters=2)


def tiny_volume_pair(shape=(24, 24, 40)):
  """A synthetic bead pair whose shape needs several 16^3 tiles."""
  from raftdvc_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  pair = synthetic.make_pair(synthetic.preset('r2_32', size=shape, disp_min=0.5, disp_max=1.5), 0)
  return pair['I1'], pair['I2']


def tiny_variables():
  """Small random weights of the tiny model, the same in every process (no compiled initialisation)."""
  import jax  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model.raft import init_params  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda: init_params(tiny_model_config(), jax.random.key(0)))
  return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def tiny_run(workdir, steps=(1, 2)):
  """A training run directory of the tiny model: checkpoints of `steps`, saved as the loop saves them."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.train import checkpoint, state, step as step_lib  # pylint: disable=import-outside-toplevel
  config = tiny_model_config()
  tx = state.optimizer(optax.constant_schedule(1e-4))
  repl = step_lib.replicated(jax.sharding.Mesh(jax.devices(), ('data',)))  # as the training loop places it
  ckpts = checkpoint.Checkpoints(workdir, config.to_json(), keep=len(steps))
  try:
    for step in steps:
      st = jax.device_put(state.create(config, tx, 0, variables=tiny_variables()), repl)
      ckpts.save(st.replace(step=st.step + step), {'step': step}, None)
  finally:
    ckpts.close()
  return str(workdir)


def _driver(mode, workdir, num_processes, process_id, port):
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_disable_most_optimizations', True)  # tiny volumes: compiling costs more than it saves
  if num_processes > 1:
    from raftdvc_jax import runtime  # pylint: disable=import-outside-toplevel
    runtime.initialize_distributed(f'127.0.0.1:{port}', num_processes, process_id)  # selects Gloo collectives on CPU
  if mode == 'train':
    from raftdvc_jax.train import loop  # pylint: disable=import-outside-toplevel
    loop.train_and_evaluate(tiny_train_config(), workdir, progress=False)
  elif mode == 'resume':  # every process of a run opens its checkpoints and resumes, as the loop does
    import optax  # pylint: disable=import-outside-toplevel
    from raftdvc_jax.train import checkpoint, state, step as step_lib  # pylint: disable=import-outside-toplevel
    repl = step_lib.replicated(jax.sharding.Mesh(jax.devices(), ('data',)))
    tx = state.optimizer(optax.constant_schedule(1e-4))
    template = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                            jax.eval_shape(lambda: state.create(tiny_model_config(), tx, 0, tiny_variables())))
    ckpts = checkpoint.Checkpoints(workdir, tiny_model_config().to_json())
    restored, meta = ckpts.restore_newest(template)
    ckpts.close()
    with open(os.path.join(workdir, f'resumed_{process_id}.json'), 'w') as f:
      json.dump({'step': int(restored.step), 'meta': meta['step']}, f)
  else:
    from raftdvc_jax.infer import distributed, tiled  # pylint: disable=import-outside-toplevel
    from raftdvc_jax.model.raft import RAFTDVC  # pylint: disable=import-outside-toplevel
    vol0 = np.load(os.path.join(workdir, 'vol0.npy'), mmap_mode='r')  # each process reads its tiles only
    vol1 = np.load(os.path.join(workdir, 'vol1.npy'), mmap_mode='r')
    apply_fn = tiled.model_apply_fn(RAFTDVC(tiny_model_config()))
    args = dict(tile=16, overlap=0.5, batch=2, params=tiny_variables(), min_size=8)
    flow, summary = distributed.run_tiled_distributed(apply_fn, vol0, vol1, **args)
    if process_id == 0:
      np.save(os.path.join(workdir, f'flow_{num_processes}.npy'), flow)
    else:
      assert flow is None
    if num_processes == 1:  # the library's single-process path, for reference
      np.save(os.path.join(workdir, 'flow_run_tiled.npy'), tiled.run_tiled(apply_fn, vol0, vol1, progress=False,
                                                                           **args))
    with open(os.path.join(workdir, f'summary_{num_processes}_{process_id}.json'), 'w') as f:
      json.dump(summary, f)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(*runs):
  """Runs the driver for each (mode, workdir, num_processes) over 127.0.0.1, all at once (XLA compiles on one
  core, so concurrent runs share the machine's cores), and waits; fails with the logs of a failed process."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs = []
  for mode, workdir, num_processes in runs:
    port = _free_port()
    procs += [(f'{mode} process {i} of {num_processes}',
               subprocess.Popen([sys.executable, __file__, mode, str(workdir), str(num_processes), str(i), str(port)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
              for i in range(num_processes)]
  outs = []
  try:
    for _, p in procs:
      outs.append(p.communicate(timeout=TIMEOUT)[0])
  finally:
    for _, p in procs:
      if p.poll() is None:
        p.kill()
  for (name, p), out in zip(procs, outs):
    assert p.returncode == 0, f'{name} failed:\n{out[-3000:]}'


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['train_loss'] for line in f if 'train_loss' in line]


def test_global_batches_do_not_depend_on_the_process_count():
  from raftdvc_jax.train import input_pipeline  # pylint: disable=import-outside-toplevel
  cfg = tiny_train_config().data
  cfg.update(train_size=5)  # a finite set: shuffled per epoch, batches straddle epochs

  def take(batch, index, count, steps=4, start=1):
    stream = input_pipeline.train_batches(cfg, batch, 7, start, index, count)
    try:
      return [next(stream) for _ in range(steps)]
    finally:
      stream.close()

  whole = take(4, 0, 1)
  halves = [take(2, i, 2) for i in range(2)]
  quarters = [take(1, i, 4) for i in range(4)]
  for step, batch in enumerate(whole):
    for parts in (halves, quarters):
      for key in ('vol0', 'vol1', 'flow'):
        np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), batch[key])
  assert not np.array_equal(whole[0]['vol0'][0], whole[0]['vol0'][1])


def test_two_process_inference_matches_one_process(tmp_path):
  vol0, vol1 = tiny_volume_pair()
  np.save(tmp_path / 'vol0.npy', vol0)
  np.save(tmp_path / 'vol1.npy', vol1)
  _launch(('infer', tmp_path, 1), ('infer', tmp_path, 2))
  one, two, ref = (np.load(tmp_path / f'flow_{n}.npy') for n in (1, 2, 'run_tiled'))
  assert one.shape == (3, *vol0.shape)
  assert float(np.abs(one).max()) > 1e-3
  np.testing.assert_allclose(one, ref, atol=1e-5)
  np.testing.assert_allclose(two, one, atol=1e-5)
  summaries = [json.load(open(tmp_path / f'summary_2_{i}.json')) for i in range(2)]
  total = summaries[0]['tiles_total']
  assert total > 2 and sorted(s['tiles'] for s in summaries) == [total // 2, total - total // 2]


@pytest.mark.parametrize('kind', ['converted', 'training run'])
def test_infer_cli_on_two_processes_writes_the_one_process_flow(tmp_path, kind):
  """infer.py --distributed: each process runs its share of the tiles, process 0 writes the blended flow.

  Both kinds of --checkpoint: a converted directory, and a training run, whose Orbax arrays were saved with
  the device placement of the process that trained (restoring it as saved fails on process 1).
  """
  import raftdvc_jax  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.convert import orbax_io  # pylint: disable=import-outside-toplevel
  vol0, vol1 = tiny_volume_pair()
  for name, vol in (('vol0', vol0), ('vol1', vol1)):
    np.save(tmp_path / f'{name}.npy', vol)
  if kind == 'converted':
    ckpt = orbax_io.save(str(tmp_path / 'ckpt'), tiny_model_config(), tiny_variables(), {'kind': 'test'})
  else:
    ckpt = tiny_run(tmp_path / 'ckpt')
  out = tmp_path / 'flow.npy'
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1',
             XLA_FLAGS='--xla_force_host_platform_device_count=1', RAFTDVC_JAX_CACHE=str(tmp_path / 'cache'))
  port = _free_port()
  args = ['--checkpoint', ckpt, '--vol0', str(tmp_path / 'vol0.npy'), '--vol1', str(tmp_path / 'vol1.npy'),
          '--output', str(out), '--tile', '16', '--overlap', '0.5', '--batch', '2', '--iters', '2', '--distributed',
          f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2']
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'infer.py'), *args, f'--process_id={i}'], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT) for i in range(2)]
  logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
    assert 'skipped' not in log, log[-3000:]  # no step blamed as damaged
  assert 'wrote' in logs[0] and 'process 0 writes' in logs[1], logs
  assert sorted(os.listdir(tmp_path)) == ['cache', 'ckpt', 'flow.npy', 'vol0.npy', 'vol1.npy']  # one output only
  est = raftdvc_jax.load(ckpt)
  ref = est.tiled(vol0, vol1, tile=16, overlap=0.5, blend='gaussian', batch=2, iters=2)
  flow = np.load(out)
  assert float(np.abs(ref).max()) > 1e-3
  np.testing.assert_allclose(flow, ref, atol=1e-5)


def test_two_processes_resuming_one_run_set_its_damaged_step_aside_once(tmp_path):
  """On shared storage only process 0 moves a damaged step and adds missing configs; both resume alike."""
  run = tiny_run(tmp_path / 'run', steps=(1, 2, 3))
  os.remove(os.path.join(run, 'checkpoints', '1', 'model_config.json'))  # as if killed before it was written
  for folder, _, files in os.walk(os.path.join(run, 'checkpoints', '3', 'variables')):
    for name in files:  # damage the newest step's arrays
      with open(os.path.join(folder, name), 'r+b') as f:
        f.truncate(os.path.getsize(f.name) // 3)
  _launch(('resume', run, 2))
  for i in range(2):
    assert json.load(open(os.path.join(run, f'resumed_{i}.json'))) == {'step': 2, 'meta': 2}
  aside = os.listdir(os.path.join(run, 'damaged_checkpoints'))
  assert len(aside) == 1 and aside[0].startswith('3-'), aside
  assert sorted(os.listdir(os.path.join(run, 'checkpoints'))) == ['1', '2']
  assert os.path.isfile(os.path.join(run, 'checkpoints', '1', 'model_config.json'))


def test_two_process_training_matches_one_process(tmp_path):
  _launch(('train', tmp_path / 'one', 1), ('train', tmp_path / 'two', 2))
  one, two = _losses(tmp_path / 'one'), _losses(tmp_path / 'two')
  assert len(one) == len(two) == 2
  assert one[1] != one[0]  # the weights moved
  assert two[0] == pytest.approx(one[0], rel=1e-6)  # the same first global batch and weights
  np.testing.assert_allclose(two, one, rtol=1e-4)


if __name__ == '__main__':
  _driver(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
