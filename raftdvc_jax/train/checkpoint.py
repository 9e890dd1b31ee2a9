"""Training checkpoints: an Orbax CheckpointManager in WORKDIR/checkpoints, readable by the inference side.

Layout of a run directory:

  WORKDIR/model_config.json            the ModelConfig of the run
  WORKDIR/config.json                  the whole training config, as run
  WORKDIR/metrics.jsonl                one JSON record per log / eval / checkpoint step
  WORKDIR/checkpoints/<step>/          one Orbax step directory per saved step:
      variables/                       {'params'[, 'batch_stats']}: what orbax_io.load_variables reads
      train_state/                     {'step', 'opt_state', 'rng'}
      meta/metadata                    JSON: step, data position, model and training config, library version
      metrics/metrics                  JSON: validation metrics of that step (val_epe ...), used for 'best'
      model_config.json                the ModelConfig again, so that a step directory loads on its own

So `raftdvc_jax.load(WORKDIR/checkpoints/<step>)` and `orbax_io.load_variables(...)` take a step directory
directly; `resolve(WORKDIR)` names the step directory to use (best by validation EPE, else latest) and
`load_run` falls back to the newest step that loads when that one is damaged.
Kept: the last `keep` steps and the best one by val_epe.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any, Mapping

from raftdvc_jax import atomic
from raftdvc_jax.convert import orbax_io
# The read side of the run layout lives in convert.runs (inference reads runs without training code).
from raftdvc_jax.convert.runs import BEST_METRIC, CHECKPOINTS, candidates, load_run, resolve, step_dirs  # pylint: disable=unused-import

log = logging.getLogger(__name__)

MODEL_CONFIG = orbax_io.CONFIG_FILE
SET_ASIDE = 'damaged_checkpoints'  # WORKDIR/SET_ASIDE/<step>-<time>: steps that failed to restore


def _on_lead_process(fn, barrier: str) -> None:
  """Runs fn on process 0 only, then makes every process of a multi-process run wait for it.

  Files every process would otherwise change at once on shared storage (a step moved aside, a config
  added) are changed once; the barrier means no process reads the directory before they are.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    fn()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(barrier)


class Checkpoints:
  """Saves and restores TrainStates under WORKDIR/checkpoints (last `keep` plus the best by val_epe)."""

  def __init__(self, workdir, model_config_json: str, keep: int = 3, track_best: bool = True):
    # pylint: disable=import-outside-toplevel
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as policies
    self._ocp = ocp
    self.directory = os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINTS)
    self.model_config = json.loads(model_config_json)
    best = lambda m: m[BEST_METRIC]
    keep_policies = [policies.LatestN(n=max(1, int(keep)))]
    if track_best:
      keep_policies.append(policies.BestN(get_metric_fn=best, reverse=True, n=1,
                                          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep_policies), best_fn=best if track_best else None,
        best_mode='min', create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    # A run killed between commit and this file.
    _on_lead_process(lambda: [self._add_model_config(d) for d in step_dirs(self.directory).values()],
                     'raftdvc_jax_checkpoint_model_configs')

  def _add_model_config(self, step_dir: str) -> None:
    """Process 0's job (callers go through _on_lead_process): on shared storage the others see its file."""
    if os.path.isdir(step_dir) and not os.path.isfile(os.path.join(step_dir, MODEL_CONFIG)):
      atomic.write_json(os.path.join(step_dir, MODEL_CONFIG), self.model_config)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, state, meta: Mapping[str, Any], metrics: Mapping[str, float] | None) -> None:
    """Saves `state` at its step with JSON `meta` and validation `metrics`; blocks until it is on disk."""
    ocp = self._ocp
    step = int(meta['step'])
    if step in self.manager.all_steps():
      return
    train_state = {'step': state.step, 'opt_state': state.opt_state, 'rng': state.rng}
    args = ocp.args.Composite(variables=ocp.args.StandardSave(state.variables),
                              train_state=ocp.args.StandardSave(train_state),
                              meta=ocp.args.JsonSave(dict(meta)))
    self.manager.save(step, args=args, metrics=None if metrics is None else dict(metrics), force=True)
    self.manager.wait_until_finished()
    _on_lead_process(lambda: self._add_model_config(os.path.join(self.directory, str(step))),
                     f'raftdvc_jax_checkpoint_saved_{step}')

  def restore(self, template, step: int | None = None):
    """(state, meta) of `step` (default latest), with the shapes, dtypes and shardings of `template`."""
    import jax  # pylint: disable=import-outside-toplevel
    ocp = self._ocp
    step = self.latest_step() if step is None else step
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    train_state = {'step': template.step, 'opt_state': template.opt_state, 'rng': template.rng}
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          variables=ocp.args.StandardRestore(abstract(template.variables)),
          train_state=ocp.args.StandardRestore(abstract(train_state)),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      # Orbax raises many types for a checkpoint that does not fit (other model, damaged files); keep the
      # first line of its message and chain the cause for whoever needs the whole story.
      message = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ValueError(f'{self.directory}/{step}: cannot restore this checkpoint ({message[:300]})') from e
    variables, ts = restored.variables, restored.train_state
    state = template.replace(step=ts['step'], params=variables['params'],
                             batch_stats=variables.get('batch_stats', template.batch_stats),
                             opt_state=ts['opt_state'], rng=ts['rng'])
    return state, dict(restored.meta)

  def restore_newest(self, template):
    """(state, meta) of the newest step that restores, or None when there is no step.

    A step that fails to restore (damaged or truncated files) is logged and moved to WORKDIR/damaged_checkpoints/
    so that training continues from the step before it and saves over its number again. When no step
    restores, the first error is raised and nothing is moved: that is a config mismatch, not damage.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    errors = []
    for step in steps:
      try:
        restored = self.restore(template, step)
      except ValueError as e:
        errors.append((step, e))
        continue
      if errors:  # every process restored the same step; one of them moves the damaged ones
        _on_lead_process(lambda: [self._set_aside(bad, e) for bad, e in errors], 'raftdvc_jax_checkpoint_aside')
        self.manager.reload()
      return restored
    if errors:
      raise errors[0][1]
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    aside = os.path.join(os.path.dirname(self.directory), SET_ASIDE)
    os.makedirs(aside, exist_ok=True)
    target = os.path.join(aside, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    shutil.move(os.path.join(self.directory, str(step)), target)
    log.warning('skipped checkpoint step %d: %s; moved it to %s and resumed from an older step', step,
                str(error).split(': ', 1)[-1], target)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
