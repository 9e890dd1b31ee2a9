"""The jitted, data-parallel train and eval steps.

One program runs over a Mesh of every device with a single axis 'data': batches are sharded on it, the
state is replicated and donated (NamedSharding; no pmap). Under jit with global arrays the gradient mean over
the batch is the all-reduce, so the step computes exactly what one device would on the whole batch.

Host batches come from raftdvc_jax.data.batches: {'vol0', 'vol1': (B, X0, X1, X2), 'flow': (B, 3, X0, X1,
X2)[, 'mask']}. For gradient accumulation they are reshaped to (accum, B / accum, ...) and the step scans over
the leading axis, so one call is one optimizer step.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from raftdvc_jax.model.raft import RAFTDVC, encode_pair, feature_encoder, prepare_pair
from raftdvc_jax.train import loss as loss_lib
from raftdvc_jax.train.state import TrainState


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh ('data',) over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, accumulated: bool = True) -> NamedSharding:
  """Sharding of a step batch: (accum, B, ...) split on B when `accumulated`, else (B, ...) split on B."""
  return NamedSharding(mesh, P(None, 'data') if accumulated else P('data'))


def split_accum(batch: Mapping[str, np.ndarray], accum_steps: int) -> dict[str, np.ndarray]:
  """Host batch (B, ...) -> (accum_steps, B / accum_steps, ...), micro-batches in stream order."""
  out = {}
  for k, v in batch.items():
    if v.shape[0] % accum_steps:
      raise ValueError(f'batch of {v.shape[0]} does not split into {accum_steps} accumulation steps')
    out[k] = v.reshape(accum_steps, v.shape[0] // accum_steps, *v.shape[1:])
  return out


def to_device(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's part of a global batch -> global arrays with `sharding` (works on one or many hosts)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def loss_fn(model: RAFTDVC, loss_cfg: Mapping[str, Any]):
  """fn(params, batch_stats, micro_batch) -> (loss, (metrics, batch_stats)): the training objective."""
  gamma = float(loss_cfg.get('gamma', 0.8))
  components = loss_cfg.get('components', 'sum')
  max_flow = loss_cfg.get('max_flow', None)
  corr_weight = float(loss_cfg.get('corr_weight', 0.0))

  def fn(params, batch_stats, mb):
    variables = {'params': params}
    if batch_stats:
      variables['batch_stats'] = batch_stats
      out, updates = model.apply(variables, mb['vol0'], mb['vol1'], train=True, mutable=['batch_stats'])
      batch_stats = updates['batch_stats']
    else:
      out = model.apply(variables, mb['vol0'], mb['vol1'], train=True)
    gt = jnp.moveaxis(mb['flow'], 1, -1)
    valid = loss_lib.valid_mask(gt, mb.get('mask'), max_flow)
    loss = loss_lib.sequence_loss(out.flows, gt, gamma, valid, components)
    metrics = loss_lib.flow_metrics(out.flow, gt, valid)
    if corr_weight:
      corr_loss = loss_lib.correlation_loss(*out.fmaps, gt)
      loss = loss + corr_weight * corr_loss
      metrics['corr_loss'] = corr_loss
    return loss, (metrics, batch_stats)

  return fn


def match_loss_fn(model: RAFTDVC):
  """fn(params, batch_stats, micro_batch) -> (loss, (metrics, batch_stats)): the correlation loss of the
  feature encoder alone (params['fnet']), without the context encoder or the update iterations."""
  fnet = feature_encoder(model.config, train=True, dtype=model.dtype)

  def fn(params, batch_stats, mb):
    batch_norm = bool(batch_stats) and 'fnet' in batch_stats  # its statistics update as in a full step
    variables = {'params': params['fnet'], **({'batch_stats': batch_stats['fnet']} if batch_norm else {})}
    updated = {}

    def encode(x):
      if not batch_norm:
        return fnet.apply(variables, x)
      y, updated['fnet'] = fnet.apply(variables, x, mutable=['batch_stats'])
      return y

    fmaps = encode_pair(encode, *prepare_pair(mb['vol0'], mb['vol1']))
    loss = loss_lib.correlation_loss(*fmaps, jnp.moveaxis(mb['flow'], 1, -1))
    if batch_norm:
      batch_stats = {**batch_stats, 'fnet': updated['fnet']['batch_stats']}
    return loss, ({'corr_loss': loss}, batch_stats)

  return fn


def global_norm(tree) -> jax.Array:
  """sqrt of the sum of squares of every leaf (what clip_by_global_norm clips)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def make_train_step(model: RAFTDVC, tx: optax.GradientTransformation, schedule: Callable,
                    loss_cfg: Mapping[str, Any], match_only: bool = False) -> Callable:
  """train_step(state, batch) -> (state, metrics); batch leaves are (accum, micro_batch, ...).

  Gradients and losses are averaged over the accumulation steps (equal micro-batches: the full-batch mean);
  batch-norm statistics, if any, update sequentially as PyTorch's would. match_only: the objective is
  match_loss_fn (the warm-up of config.train.loss.match_warmup) and only params['fnet'] change.
  """
  grad_fn = jax.value_and_grad(match_loss_fn(model) if match_only else loss_fn(model, loss_cfg), has_aux=True)

  def train_step(state: TrainState, batch):
    accum = jax.tree.leaves(batch)[0].shape[0]
    if accum == 1:
      (loss, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats,
                                                       jax.tree.map(lambda x: x[0], batch))
    else:
      def body(carry, mb):
        grads_sum, loss_sum, metrics_sum, stats = carry
        (loss, (metrics, stats)), grads = grad_fn(state.params, stats, mb)
        add = lambda a, b: jax.tree.map(jnp.add, a, b)
        return (add(grads_sum, grads), loss_sum + loss, add(metrics_sum, metrics), stats), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      metric_names = (('corr_loss',) if match_only else
                      ('epe', 'corr_loss') if loss_cfg.get('corr_weight', 0.0) else ('epe',))
      init = (zeros, jnp.zeros((), jnp.float32), {k: jnp.zeros((), jnp.float32) for k in metric_names},
              state.batch_stats)
      (grads, loss, metrics, batch_stats), _ = jax.lax.scan(body, init, batch)
      grads = jax.tree.map(lambda g: g / accum, grads)
      loss, metrics = loss / accum, jax.tree.map(lambda m: m / accum, metrics)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if match_only:  # AdamW's weight decay would still shrink the rest: the warm-up moves fnet alone
      updates = {name: u if name == 'fnet' else jax.tree.map(jnp.zeros_like, u) for name, u in updates.items()}
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=global_norm(grads), lr=schedule(state.step))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  return train_step


def jit_train_step(train_step: Callable, mesh: Mesh) -> Callable:
  """The step jitted over `mesh`: state replicated and donated, batch sharded on 'data'."""
  repl = replicated(mesh)
  return jax.jit(train_step, in_shardings=(repl, batch_sharding(mesh)), out_shardings=(repl, repl),
                 donate_argnums=0)


def make_eval_step(model: RAFTDVC, mesh: Mesh, iters: int | None = None) -> Callable:
  """eval_step(variables, batch) -> per-voxel endpoint error (B, X0, X1, X2) of the final flow, jitted."""

  def eval_step(variables, batch):
    out = model.apply(variables, batch['vol0'], batch['vol1'], iters=iters)
    return loss_lib.endpoint_error(out.flow, jnp.moveaxis(batch['flow'], 1, -1))

  data = batch_sharding(mesh, accumulated=False)
  return jax.jit(eval_step, in_shardings=(replicated(mesh), data), out_shardings=data)
