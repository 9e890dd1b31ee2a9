"""Reading a training run directory: which step to use (best by validation EPE, or latest) and loading it.

The layout (written by raftdvc_jax.train.checkpoint): WORKDIR/checkpoints/<step>/ holds variables/ (Orbax),
model_config.json and metrics/metrics (the step's validation record), so a step directory loads like a
converted directory. This side of it only reads files and needs no training code.
"""

from __future__ import annotations

import json
import logging
import os

from raftdvc_jax.convert import orbax_io

log = logging.getLogger(__name__)

CHECKPOINTS = 'checkpoints'
BEST_METRIC = 'val_epe'


def step_dirs(directory: str) -> dict[int, str]:
  """{step: directory} of the saved steps (those with variables/) in a checkpoints/ directory."""
  if not os.path.isdir(directory):
    return {}
  return {int(n): os.path.join(directory, n) for n in os.listdir(directory)
          if n.isdigit() and os.path.isdir(os.path.join(directory, n, 'variables'))}


def _metric(step_dir: str) -> float | None:
  try:
    with open(os.path.join(step_dir, 'metrics', 'metrics')) as f:
      value = json.load(f).get(BEST_METRIC)
    return None if value is None else float(value)
  except (OSError, ValueError, AttributeError):
    return None


def candidates(path, which: str = 'best') -> list[tuple[str, str]]:
  """(step directory, why it was picked) to try in order: `which` first, then every other step, newest first.

  path is a run directory, its checkpoints/ directory or a step directory. which: 'best' (lowest val_epe;
  the latest when no step has one) or 'latest'.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.isdir(os.path.join(path, 'variables')):
    return [(path, 'the step directory given')]
  if which not in ('best', 'latest'):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  directory = os.path.join(path, CHECKPOINTS) if os.path.isdir(os.path.join(path, CHECKPOINTS)) else path
  steps = step_dirs(directory)
  if not steps:
    raise FileNotFoundError(f'{path}: no training checkpoint (expected {CHECKPOINTS}/<step>/variables)')
  scores = {s: _metric(d) for s, d in steps.items()}
  scored = sorted((m, s) for s, m in scores.items() if m is not None)
  order = [scored[0][1]] if which == 'best' and scored else []
  order += [s for s in sorted(steps, reverse=True) if s not in order]

  def why(s):
    kind = 'best' if scored and s == scored[0][1] else 'latest' if s == max(steps) else 'older'
    return f'step {s} ({kind}' + (f', {BEST_METRIC} {scores[s]:.4g})' if scores[s] is not None else ')')

  return [(steps[s], why(s)) for s in order]


def resolve(path, which: str = 'best') -> str:
  """The step directory to load from a run directory, its checkpoints/ directory or a step directory."""
  return candidates(path, which)[0][0]


def load_run(path, which: str = 'best', load=None):
  """(step_dir, load(step_dir)) of the `which` step of a run, falling back to the newest step that loads.

  Logs which step it uses (best or latest, and its val_epe) and every step it skipped and why. When no step
  loads, the steps are not blamed one by one: the cause is then not a damaged step (a config mismatch, a
  failed restore) and the first error is raised, naming how many steps it applies to.
  """
  if load is None:
    load = orbax_io.load_variables
  skipped = []
  for step_dir, why in candidates(path, which):
    try:
      result = load(step_dir)
    except (ValueError, OSError) as e:
      skipped.append((step_dir, why, e))
      continue
    for bad_dir, bad_why, e in skipped:
      log.warning('%s: skipped %s: cannot load it (%s)', bad_dir, bad_why, str(e).splitlines()[0][:300])
    log.info('%s: using %s', os.fspath(path), why)
    return step_dir, result
  first = skipped[0][2]
  if len(skipped) > 1:
    raise ValueError(f'{first}; none of the {len(skipped)} steps of {os.fspath(path)} loads') from first
  raise first
