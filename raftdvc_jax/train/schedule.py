"""Learning-rate schedules that reproduce PyTorch's OneCycleLR and CyclicLR step for step.

A schedule maps the number of optimizer steps taken so far (0 for the first update) to the learning rate of
the next update, as a PyTorch scheduler stepped once per optimizer step does. They are written with
jax.numpy so that optax evaluates them inside the jitted train step; they also take plain Python ints.
VolRAFT steps its CyclicLR once per epoch: `per_epoch` (or `steps_per_epoch` in the config) expresses that.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax.numpy as jnp

Schedule = Callable[[Any], Any]
ANNEALS = ('cos', 'linear')
CYCLIC_MODES = ('triangular', 'triangular2', 'exp_range')


def _anneal(kind: str, start, end, done, left):
  """PyTorch's anneal from start to end at pct = done = 1 - left, written without cancellation.

  cos: end + (start - end) (cos(pi pct) + 1) / 2 = start sin^2(pi/2 left) + end sin^2(pi/2 done); linear:
  start left + end done. With `left` computed from the step directly, both ends of a 2e-4 -> 8e-10 anneal keep
  float32's relative precision.
  """
  if kind == 'cos':
    return start * jnp.square(jnp.sin(0.5 * jnp.pi * left)) + end * jnp.square(jnp.sin(0.5 * jnp.pi * done))
  return start * left + end * done


def onecycle(total_steps: int, max_lr: float, pct_start: float = 0.3, anneal: str = 'cos',
             div_factor: float = 25.0, final_div_factor: float = 1e4) -> Schedule:
  """torch.optim.lr_scheduler.OneCycleLR (two phases, cycle_momentum=False) as a function of the step.

  Warm-up from max_lr/div_factor to max_lr until step float(pct_start * total_steps) - 1, then anneal to
  max_lr/(div_factor * final_div_factor) at step total_steps - 1: PyTorch's own phase boundaries, which
  optax.cosine_onecycle_schedule (integer boundaries) only approximates. Steps past the end hold the final lr.
  """
  if total_steps < 1 or not 0 < pct_start < 1 or max_lr <= 0 or anneal not in ANNEALS:
    raise ValueError(f'onecycle needs total_steps >= 1, 0 < pct_start < 1, max_lr > 0 and anneal in {ANNEALS}; '
                     f'got {total_steps}, {pct_start}, {max_lr}, {anneal!r}')
  initial = max_lr / div_factor
  final = initial / final_div_factor
  warm_end = float(pct_start * total_steps) - 1.0
  end = float(total_steps - 1)

  def phase(step, start, stop, lr0, lr1):
    # PyTorch divides by (end_step - start_step); a degenerate phase (length 0) sits at its end.
    if stop - start <= 0:
      return jnp.full_like(step, lr1)
    done = jnp.clip((step - start) / (stop - start), 0.0, 1.0)
    left = jnp.clip((stop - step) / (stop - start), 0.0, 1.0)
    return _anneal(anneal, lr0, lr1, done, left)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return jnp.where(step <= warm_end, phase(step, 0.0, warm_end, initial, max_lr),
                     phase(step, warm_end, end, max_lr, final))

  return schedule


def cyclic(base_lr: float, max_lr: float, step_size_up: float, step_size_down: float | None = None,
           mode: str = 'triangular2', gamma: float = 1.0) -> Schedule:
  """torch.optim.lr_scheduler.CyclicLR (cycle_momentum=False) as a function of the scheduler step."""
  if mode not in CYCLIC_MODES or step_size_up <= 0 or (step_size_down is not None and step_size_down < 0):
    raise ValueError(f'cyclic needs mode in {CYCLIC_MODES} and positive step sizes; got {mode!r}, '
                     f'{step_size_up}, {step_size_down}')
  up = float(step_size_up)
  down = float(step_size_down) if step_size_down is not None else up
  total = up + down
  ratio = up / total

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    cycle = jnp.floor(1.0 + step / total)
    x = 1.0 + step / total - cycle
    scale = jnp.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
    if mode == 'triangular':
      amp = 1.0
    elif mode == 'triangular2':
      amp = 1.0 / (2.0 ** (cycle - 1.0))
    else:  # exp_range scales by iterations, not cycles
      amp = jnp.float32(gamma) ** step
    return base_lr + (max_lr - base_lr) * scale * amp

  return schedule


def constant(lr: float) -> Schedule:
  """A fixed learning rate."""
  return lambda step: jnp.full((), lr, jnp.float32) + 0.0 * jnp.asarray(step, jnp.float32)


def per_epoch(schedule: Schedule, steps_per_epoch: int) -> Schedule:
  """Advances `schedule` once every `steps_per_epoch` optimizer steps (a PyTorch scheduler stepped per epoch)."""
  if steps_per_epoch < 1:
    raise ValueError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}')
  if steps_per_epoch == 1:
    return schedule
  return lambda step: schedule(jnp.asarray(step, jnp.int32) // steps_per_epoch)


def from_config(cfg: Mapping[str, Any], num_steps: int, lr: float) -> Schedule:
  """The schedule described by config.train.schedule for a run of num_steps optimizer steps at peak `lr`.

  name 'onecycle' (pct_start, anneal, div_factor, final_div_factor), 'cyclic' (base_lr, step_size_up,
  step_size_down, mode, gamma; lr is max_lr) or 'constant'. steps_per_epoch > 1 advances the schedule once
  per that many optimizer steps; a OneCycle then spans ceil(num_steps / steps_per_epoch) scheduler steps.
  """
  cfg = dict(cfg)
  name = cfg.pop('name', 'onecycle')
  steps_per_epoch = int(cfg.pop('steps_per_epoch', 1) or 1)
  if name == 'onecycle':
    keys = ('pct_start', 'anneal', 'div_factor', 'final_div_factor')
    sched = onecycle(math.ceil(num_steps / steps_per_epoch), lr, **{k: cfg[k] for k in keys if k in cfg})
  elif name == 'cyclic':
    keys = ('step_size_up', 'step_size_down', 'mode', 'gamma')
    kwargs = {k: cfg[k] for k in keys if k in cfg and cfg[k] is not None}
    sched = cyclic(cfg['base_lr'], lr, **kwargs)
  elif name == 'constant':
    sched = constant(lr)
  else:
    raise ValueError(f"schedule name must be 'onecycle', 'cyclic' or 'constant', got {name!r}")
  return per_epoch(sched, steps_per_epoch)
