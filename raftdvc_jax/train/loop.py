"""The trainer: one readable loop from config to checkpoints (big_vision style).

train_and_evaluate(config, workdir) builds the model, optimizer and data from an ml_collections config,
resumes from WORKDIR/checkpoints when there is a checkpoint (running the same command again continues exactly
where the last one stopped; a larger num_steps trains on), and writes WORKDIR/metrics.jsonl, TensorBoard
events and Orbax checkpoints (layout in checkpoint.py). SIGTERM / SIGINT stop it at the next step boundary
with a checkpoint. config.init_from (converted or PyTorch weights to fine-tune) only seeds a fresh run; a run
directory with checkpoints always resumes from them.

Determinism: batch `s` depends only on (seed, s), the state is restored bit for bit, and metrics are written at
fixed steps (every log_every, eval_every and checkpoint_every step and the last), so a resumed run writes the
same records as an uninterrupted one (steps_per_s aside).
"""

from __future__ import annotations

import functools
import json
import os
import logging
import signal
import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from raftdvc_jax import atomic
from raftdvc_jax.data import masks
from raftdvc_jax import metrics as metrics_lib
from raftdvc_jax import progress as progress_lib
from raftdvc_jax.data import synthetic
from raftdvc_jax.model.config import ModelConfig
from raftdvc_jax.model.raft import RAFTDVC
from raftdvc_jax.train import checkpoint as ckpt_lib
from raftdvc_jax.train import input_pipeline
from raftdvc_jax.train import schedule as schedule_lib
from raftdvc_jax.train import state as state_lib
from raftdvc_jax.train import step as step_lib

log = logging.getLogger(__name__)
COMPUTE_DTYPES = {'float32': None, 'bfloat16': jnp.bfloat16}
METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'


def _plain(cfg) -> dict[str, Any]:
  """A ConfigDict (or mapping) as plain JSON-ready Python data."""
  d = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
  return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def validate(config) -> ModelConfig:
  """Checks a training config; returns its ModelConfig. Raises ValueError with one line naming the field."""
  model_cfg = ModelConfig.from_dict(_plain(config.model))
  t = config.train
  for name in ('num_steps', 'batch_size', 'grad_accum', 'log_every', 'eval_every', 'checkpoint_every',
               'keep_checkpoints'):
    if int(t[name]) < 1:
      raise ValueError(f'config.train.{name} must be >= 1, got {t[name]}')
  if t.batch_size % t.grad_accum:
    raise ValueError(f'config.train.batch_size {t.batch_size} is not a multiple of grad_accum {t.grad_accum}')
  if not t.lr > 0:
    raise ValueError(f'config.train.lr must be > 0, got {t.lr}')
  if t.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'config.train.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {t.compute_dtype!r}')
  if t.seed < 0:
    raise ValueError(f'config.train.seed must be >= 0, got {t.seed}')
  if t.correlation not in ('allpairs', 'local'):
    raise ValueError(f"config.train.correlation must be 'allpairs' or 'local', got {t.correlation!r}")
  if t.lookup not in ('auto', 'reference', 'separable', 'slab'):
    raise ValueError(f'config.train.lookup must be auto, reference, separable or slab, got {t.lookup!r}')
  loss = _plain(t.loss)
  if loss.get('components', 'sum') not in ('sum', 'mean'):
    raise ValueError(f"config.train.loss.components must be 'sum' or 'mean', got {loss.get('components')!r}")
  warmup = loss.get('match_warmup', 0)
  if not (isinstance(warmup, int) and 0 <= warmup < t.num_steps):
    raise ValueError(f'config.train.loss.match_warmup must be a whole number >= 0 and below num_steps '
                     f'({t.num_steps}), got {warmup!r}')
  schedule_lib.from_config(_plain(t.schedule), t.num_steps - warmup, t.lr)  # raises on a bad schedule
  d = config.data
  if d.get('dir'):
    if not os.path.isdir(d.dir):
      raise ValueError(f'{d.dir}: config.data.dir is not a directory')
    sizes = [d.augment.crop] if d.augment.get('crop') else []
  else:
    syn = synthetic.SyntheticConfig.from_dict(_plain(d.synthetic))
    sizes = [d.augment.crop] if d.augment.get('crop') else [syn.shape]
    if syn.disp_max > min(syn.shape) / 4:
      log.warning('config.data.synthetic.disp_max %g exceeds a quarter of the %s volume: many beads leave it',
                  syn.disp_max, 'x'.join(map(str, syn.shape)))
  for size in sizes:
    size = (size,) * 3 if np.isscalar(size) else tuple(size)
    model_cfg.check_size(size, 'training volumes of')
  return model_cfg


def _check_workdir(workdir: str, model_cfg: ModelConfig) -> None:
  path = os.path.join(workdir, ckpt_lib.MODEL_CONFIG)
  if os.path.isfile(path):
    try:
      with open(path) as f:
        old = ModelConfig.from_dict(json.load(f))
    except (ValueError, TypeError) as e:
      raise ValueError(f'{path}: not a model config ({e})') from None
    if old != model_cfg:
      raise ValueError(f'{path}: this run directory holds a different model ({old.to_json()}); '
                       'use a new --workdir')


def _read_records(path: str, upto: int) -> list[str]:
  """Lines of metrics.jsonl with step <= upto (what the checkpoint being resumed had seen)."""
  if not os.path.isfile(path):
    return []
  keep = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)['step'] <= upto:
          keep.append(line if line.endswith('\n') else line + '\n')
      except (ValueError, KeyError, TypeError):
        continue  # a line cut short by a kill
  return keep


class _StopFlag:
  """Set by SIGTERM / SIGINT; the loop checks it at step boundaries."""

  def __init__(self):
    self.signal = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.signal is not None:  # a second Ctrl-C: stop now
      raise KeyboardInterrupt
    self.signal = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _replicate(tree, sharding):
  """Host (or single-device) arrays -> global arrays with `sharding` (replicated), on one or many hosts."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def evaluate(eval_step, variables, samples, batch_size: int, mesh) -> dict[str, float]:
  """Endpoint error of the final flow over every (valid) voxel of the validation samples."""
  sharding = step_lib.batch_sharding(mesh, accumulated=False)
  pid, pcount = jax.process_index(), jax.process_count()
  errors, zero = [], []
  for batch, real in input_pipeline.validation_batches(samples, batch_size):
    local = batch_size // pcount
    part = {k: batch[k][pid * local:(pid + 1) * local] for k in ('vol0', 'vol1', 'flow')}
    epe = eval_step(variables, step_lib.to_device(part, sharding))
    if pcount > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      epe = multihost_utils.process_allgather(epe, tiled=True)
    epe = np.asarray(epe)[:real]
    still = np.sqrt(np.sum(np.square(batch['flow'][:real].astype(np.float64)), axis=1))  # EPE of no motion
    if 'mask' in batch:
      keep = masks.inside(batch['mask'][:real])
      epe, still = epe[keep], still[keep]
    errors.append(epe.ravel())
    zero.append(still.ravel())
  stats = metrics_lib.summarize(np.concatenate(errors), quantiles=('median', 'p90'))
  return {'val_epe': stats['mean'], 'val_epe_median': stats['median'], 'val_epe_p90': stats['p90'],
          'val_zero_epe': float(np.mean(np.concatenate(zero)))}


# The parts of config.train the compiled programs depend on; the rest (logging, data, seeds) do not.
PROGRAM_KEYS = ('correlation', 'lookup', 'compute_dtype', 'remat', 'schedule', 'num_steps', 'lr', 'weight_decay',
                'clip_norm', 'loss')


class Programs(NamedTuple):
  """What one model and config.train compile to."""

  mesh: Mesh
  tx: optax.GradientTransformation
  train_step: Callable      # (state, batch) -> (state, metrics)
  eval_step: Callable       # (variables, batch) -> per-voxel EPE
  warmup_step: Callable | None  # the loss.match_warmup step (feature encoder alone), or None
  restart: Callable | None      # state -> state with fresh optimizer moments, at the end of the warm-up


@functools.lru_cache(maxsize=4)
def _programs(model_cfg: ModelConfig, train_json: str, devices: tuple) -> Programs:
  """The Programs of one model and the PROGRAM_KEYS of config.train.

  With loss.match_warmup = W > 0 the first W steps train the feature encoder alone on the correlation loss
  at the constant peak lr; then the optimizer restarts (fresh moments) and config.train.schedule runs over
  the remaining num_steps - W steps, as if the warm-up had been a separate pre-training run.
  Cached, so that runs of one config in one process (resume, sweeps, tests) compile once.
  """
  t = json.loads(train_json)
  mesh = step_lib.make_mesh(devices)
  model = RAFTDVC(model_cfg, correlation=t['correlation'], lookup=t['lookup'], dtype=COMPUTE_DTYPES[t['compute_dtype']],
                  remat=t['remat'])
  warmup = int(t['loss'].get('match_warmup', 0))
  schedule = schedule_lib.from_config(t['schedule'], t['num_steps'] - warmup, t['lr'])
  tx = state_lib.optimizer(schedule, t['weight_decay'], t['clip_norm'])
  logged = schedule if not warmup else lambda step: schedule(step - warmup)  # the lr the step logs
  train_step = step_lib.jit_train_step(step_lib.make_train_step(model, tx, logged, t['loss']), mesh)
  eval_step = step_lib.make_eval_step(model, mesh)
  if not warmup:
    return Programs(mesh, tx, train_step, eval_step, None, None)
  # The same optimizer chain at a constant lr: its state has the same structure, so checkpoints do not
  # depend on the phase.
  constant = schedule_lib.constant(t['lr'])
  warm_tx = state_lib.optimizer(constant, t['weight_decay'], t['clip_norm'])
  warmup_step = step_lib.jit_train_step(
      step_lib.make_train_step(model, warm_tx, constant, t['loss'], match_only=True), mesh)
  repl = step_lib.replicated(mesh)
  restart = jax.jit(lambda state: state.replace(opt_state=tx.init(state.params)), in_shardings=repl,
                    out_shardings=repl, donate_argnums=0)
  return Programs(mesh, tx, train_step, eval_step, warmup_step, restart)


def is_time(step: int, every: int, last: int) -> bool:
  """Whether a periodic action (log, eval, checkpoint) is due after `step`: every `every` steps and the last."""
  return step % every == 0 or step == last


class NonFiniteLossError(ValueError):
  """The training loss became NaN or inf; the run stops without saving the broken state."""


class _Pacer:
  """Back-pressure and timing: the host stays at most one step ahead of the device, and steps are timed
  from the end of the first one (so compilation is excluded from steps_per_s)."""

  def __init__(self):
    self.previous, self.clock, self.timed = None, None, 0

  def step_done(self, metrics) -> None:
    if self.previous is not None:
      jax.block_until_ready(self.previous)
    self.previous = metrics
    if self.clock is None:
      jax.block_until_ready(metrics)
      self.clock = time.perf_counter()
    else:
      self.timed += 1

  def untimed_next(self) -> None:
    """The next step compiles a new program: time from its end, as from the first step's."""
    self.clock, self.timed = None, 0

  def lap(self) -> tuple[float, int]:
    """(seconds, timed steps) since the last lap; starts the next one."""
    now = time.perf_counter()
    seconds, timed = now - (self.clock or now), self.timed
    self.clock, self.timed = now, 0
    return seconds, timed


class _Records:
  """WORKDIR/metrics.jsonl and the TensorBoard events (process 0 only), cut back to `step` on resume."""

  def __init__(self, workdir: str, step: int, lead: bool):
    import tensorboardX  # pylint: disable=import-outside-toplevel
    self.path = os.path.join(workdir, METRICS_FILE)
    self.lead = lead
    self.writer = None
    if lead:
      atomic.write_text(self.path, ''.join(_read_records(self.path, step)))
      # purge_step: TensorBoard drops what a killed run logged after the checkpoint being resumed.
      self.writer = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'),
                                               purge_step=step + 1 if step else None)

  def write(self, record: dict) -> None:
    if not self.lead:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for key, value in record.items():
      if key != 'step' and value is not None:
        tag = ('val/' if key.startswith('val_') else 'train/') + key.removeprefix('val_').removeprefix('train_')
        self.writer.add_scalar(tag, value, record['step'])

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _window_record(step: int, window: list, seconds: float, timed_steps: int) -> dict[str, Any]:
  """The mean of each metric over the steps of the window that have it (warm-up steps have no epe)."""
  host = jax.device_get(window)
  mean = lambda k: float(np.mean([m[k] for m in host if k in m], dtype=np.float64))
  record = {'step': step, 'train_loss': mean('loss'), 'lr': float(host[-1]['lr']), 'grad_norm': mean('grad_norm'),
            'steps_per_s': timed_steps / seconds if seconds > 0 and timed_steps > 0 else None}
  for key in ('epe', 'corr_loss'):
    if any(key in m for m in host):
      record['train_' + key] = mean(key)
  return record


def _check_finite(record: dict, ckpts, first_step: int) -> None:
  """Stops the run when the loss of the window ending at record['step'] is not finite."""
  if np.isfinite(record['train_loss']):
    return
  good = ckpts.latest_step()
  where = (f'the last good checkpoint is step {good} ({ckpts.directory}/{good})' if good is not None
           else 'there is no checkpoint yet')
  raise NonFiniteLossError(f'the training loss became {record["train_loss"]} between steps {first_step} and '
                           f'{record["step"]}; {where}. Lower config.train.lr or raise clip_norm, then resume')


def _prepare_workdir(workdir: str, model_cfg: ModelConfig, config, lead: bool) -> None:
  os.makedirs(workdir, exist_ok=True)
  _check_workdir(workdir, model_cfg)
  if lead:
    atomic.write_json(os.path.join(workdir, ckpt_lib.MODEL_CONFIG), model_cfg.to_dict())
    atomic.write_json(os.path.join(workdir, CONFIG_FILE), _plain(config))


def _initial_state(config, model_cfg: ModelConfig, tx, ckpts, repl):
  """The newest checkpoint that restores, or a fresh state (from config.init_from when given)."""
  shapes = state_lib.abstract(model_cfg, tx)
  template = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)
  restored = ckpts.restore_newest(template)
  if restored is not None:
    log.info('resumed from step %d', int(jax.device_get(restored[0].step)))
    return restored[0]
  variables = state_lib.load_pretrained(config.init_from, model_cfg) if config.get('init_from') else None
  return _replicate(state_lib.create(model_cfg, tx, config.train.seed, variables), repl)


def _batch_layout(t, mesh) -> tuple[int, int, int]:
  """(grad_accum, processes, micro-batch), checking that the batch splits over devices and processes."""
  accum, pcount = int(t.grad_accum), jax.process_count()
  micro = t.batch_size // accum
  if micro % mesh.size:
    raise ValueError(f'the micro-batch (batch_size / grad_accum = {micro}) must be a multiple of the '
                     f'{mesh.size} devices')
  if t.batch_size % pcount:
    raise ValueError(f'config.train.batch_size {t.batch_size} must be a multiple of the {pcount} processes')
  return accum, pcount, micro


def _report(step, window, pacer, validate_now, records, bar, ckpts) -> tuple[dict, dict | None]:
  """(record, validation) of a logging window: checked finite, validated when validate_now is given, written
  and shown on the bar."""
  record = _window_record(step, window, *pacer.lap())
  _check_finite(record, ckpts, step - len(window) + 1)
  val = validate_now() if validate_now is not None else None
  record.update(val or {})
  records.write(record)
  bar.set_postfix_str(f'loss {record["train_loss"]:.4g}' + (f' val_epe {val["val_epe"]:.4g}' if val else ''))
  return record, val


def train_and_evaluate(config, workdir, *, progress: bool = True) -> dict:
  """Trains (or resumes) the run of `config` in `workdir`; returns the last metrics record."""
  model_cfg = validate(config)
  t = config.train
  workdir = os.path.abspath(os.fspath(workdir))
  lead = jax.process_index() == 0
  _prepare_workdir(workdir, model_cfg, config, lead)

  # Devices, model, optimizer and the compiled steps.
  train_json = json.dumps({k: _plain(t)[k] for k in PROGRAM_KEYS}, sort_keys=True)
  programs = _programs(model_cfg, train_json, tuple(jax.devices()))
  mesh, tx, eval_step = programs.mesh, programs.tx, programs.eval_step
  warmup = int(t.loss.get('match_warmup', 0))
  accum, pcount, micro = _batch_layout(t, mesh)
  repl = step_lib.replicated(mesh)

  # Data: the validation set is fixed and held in memory; training batches stream from background threads.
  val_samples = input_pipeline.validation_set(config.data, t.seed)
  val_batch = int(t.get('val_batch_size', 0) or micro)
  val_batch = -(-val_batch // mesh.size) * mesh.size

  ckpts = ckpt_lib.Checkpoints(workdir, model_cfg.to_json(), keep=t.keep_checkpoints,
                               track_best=bool(val_samples))
  try:
    state = _initial_state(config, model_cfg, tx, ckpts, repl)
  except BaseException:
    ckpts.close()
    raise
  step = int(jax.device_get(state.step))
  if step >= t.num_steps:
    log.warning('%s: already at step %d of %d; nothing to do (raise config.train.num_steps to train on)',
                workdir, step, t.num_steps)
    ckpts.close()
    return {'step': step}
  records = _Records(workdir, step, lead)

  batches = input_pipeline.train_batches(config.data, t.batch_size // pcount, t.seed, step,
                                         jax.process_index(), pcount)
  batch_sharding = step_lib.batch_sharding(mesh)
  bar = progress_lib.bar(t.num_steps, 'train', progress and lead, initial=step, unit='step')
  pacer, window, last = _Pacer(), [], {'step': step}
  try:
    with _StopFlag() as stop:
      while step < t.num_steps:
        batch = step_lib.to_device(step_lib.split_accum(next(batches), accum), batch_sharding)
        if warmup and step == warmup:  # the warm-up is over (in this run or before a resume)
          state = programs.restart(state)
          pacer.untimed_next()  # the full step compiles now
        state, metrics = (programs.warmup_step if step < warmup else programs.train_step)(state, batch)
        step += 1
        window.append(metrics)
        pacer.step_done(metrics)
        bar.update(1)

        stopping = stop.signal is not None
        is_ckpt = is_time(step, t.checkpoint_every, t.num_steps) or stopping
        is_eval = bool(val_samples) and (is_time(step, t.eval_every, t.num_steps) or is_ckpt)
        # A record at the end of the warm-up, so that no window mixes warm-up and full steps.
        if not (is_ckpt or is_eval or is_time(step, t.log_every, t.num_steps) or step == warmup):
          continue
        val = (lambda: evaluate(eval_step, state.variables, val_samples, val_batch, mesh)) if is_eval else None
        last, val = _report(step, window, pacer, val, records, bar, ckpts)
        window = []
        if is_ckpt:
          meta = {'step': step, 'data_position': step * t.batch_size, 'seed': t.seed,
                  'model_config': model_cfg.to_dict(), 'config': _plain(config), 'time': time.time()}
          ckpts.save(state, meta, val)
        if stopping:
          log.warning('stopped by signal %s at step %d; checkpoint saved; run the same command to resume',
                      stop.signal, step)
          last = dict(last, interrupted=True)
          break
  finally:
    batches.close()  # stops the loader threads
    bar.close()
    ckpts.close()
    records.close()
  log.info('step %d: %s', step, ', '.join(f'{k} {v:.4g}' for k, v in last.items()
                                          if isinstance(v, float) and k != 'steps_per_s'))
  return last
