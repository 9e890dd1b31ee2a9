"""Schedules and optimizer against PyTorch's OneCycleLR, CyclicLR, AdamW and clip_grad_norm_, step by step."""

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
import optax

from raftdvc_jax.train import schedule
from raftdvc_jax.train import state as state_lib


def _torch_lrs(make_scheduler, steps, steps_per_epoch=1):
  """The lr PyTorch uses for each optimizer step, its scheduler stepped every `steps_per_epoch` steps."""
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.AdamW([param], lr=1.0)
  sched = make_scheduler(opt)
  out = []
  for i in range(steps):
    out.append(opt.param_groups[0]['lr'])
    opt.step()
    if (i + 1) % steps_per_epoch == 0:
      sched.step()
  return np.asarray(out)


def _ours(fn, steps):
  return np.asarray(jax.jit(jax.vmap(fn))(jnp.arange(steps)), np.float64)


@pytest.mark.parametrize('total,pct,anneal', [(75, 0.2, 'cos'), (75, 0.2, 'linear'), (37, 0.3, 'cos'),
                                              (101, 0.05, 'linear'), (9, 0.5, 'cos')])
def test_onecycle_matches_torch_every_step(total, pct, anneal):
  ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
      o, max_lr=2e-4, total_steps=total, pct_start=pct, anneal_strategy=anneal, div_factor=25.0,
      final_div_factor=1e4, cycle_momentum=False), total)
  got = _ours(schedule.onecycle(total, 2e-4, pct, anneal, 25.0, 1e4), total)
  np.testing.assert_allclose(got, ref, rtol=2e-5, atol=0)
  assert got[0] == pytest.approx(2e-4 / 25, rel=1e-6) and got[-1] == pytest.approx(2e-4 / 25 / 1e4, rel=1e-4)


def test_onecycle_uses_torch_phase_boundary_not_optax_integer_one():
  # pct * T = 7.5: torch peaks at float(7.5) - 1 = 6.5 (so step 6 is still warming up); optax at int(7.5) = 7.
  total = 25
  ours = _ours(schedule.onecycle(total, 1.0, 0.3, 'cos'), total)
  optax_sched = np.asarray([optax.cosine_onecycle_schedule(total, 1.0, 0.3)(i) for i in range(total)])
  ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
      o, max_lr=1.0, total_steps=total, pct_start=0.3, cycle_momentum=False), total)
  np.testing.assert_allclose(ours, ref, rtol=2e-5)
  assert np.max(np.abs(optax_sched - ref)) > 1e-3  # what the exact version fixes


def test_cyclic_triangular2_matches_torch_per_step_and_per_epoch():
  make = lambda o: torch.optim.lr_scheduler.CyclicLR(o, base_lr=2e-5, max_lr=2e-4, step_size_up=5,
                                                     step_size_down=15, mode='triangular2', cycle_momentum=False)
  ref = _torch_lrs(make, 130)
  np.testing.assert_allclose(_ours(schedule.cyclic(2e-5, 2e-4, 5, 15, 'triangular2'), 130), ref, rtol=1e-5)
  # VolRAFT steps its scheduler once per epoch: expressed by steps_per_epoch in the config.
  cfg = {'name': 'cyclic', 'base_lr': 2e-5, 'step_size_up': 5, 'step_size_down': 15, 'mode': 'triangular2',
         'steps_per_epoch': 4}
  ref_epochs = _torch_lrs(make, 4 * 50, steps_per_epoch=4)
  np.testing.assert_allclose(_ours(schedule.from_config(cfg, 200, 2e-4), 200), ref_epochs, rtol=1e-5)
  assert len(set(ref_epochs[:4])) == 1 and ref_epochs[4] > ref_epochs[3]


def test_from_config_rejects_unknown_schedule():
  with pytest.raises(ValueError, match='schedule name'):
    schedule.from_config({'name': 'step'}, 10, 1e-3)
  with pytest.raises(ValueError):
    schedule.onecycle(10, 1e-3, pct_start=1.5)


def test_optimizer_matches_torch_adamw_with_clipping_and_onecycle():
  """clip_by_global_norm + adamw(schedule) follows torch clip_grad_norm_ + AdamW + OneCycleLR."""
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(4, 3)).astype(np.float32)
  grads = [rng.normal(size=(4, 3)).astype(np.float32) * s for s in (5.0, 0.1, 3.0, 0.5, 2.0, 1.0)]
  total = len(grads)
  sched = schedule.onecycle(total, 1e-2, 0.3, 'cos')
  tx = state_lib.optimizer(sched, weight_decay=5e-5, clip_norm=1.0)
  params = {'w': jnp.asarray(w0)}
  opt_state = tx.init(params)
  for g in grads:
    updates, opt_state = tx.update({'w': jnp.asarray(g)}, opt_state, params)
    params = optax.apply_updates(params, updates)

  w = torch.nn.Parameter(torch.tensor(w0))
  opt = torch.optim.AdamW([w], lr=1e-2, weight_decay=5e-5)
  torch_sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-2, total_steps=total, pct_start=0.3,
                                                    cycle_momentum=False)
  for g in grads:
    w.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_([w], 1.0)
    opt.step()
    torch_sched.step()
  np.testing.assert_allclose(np.asarray(params['w']), w.detach().numpy(), rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(params['w']), w0)
