"""The demo: a synthetic bead pair with a known field, its estimated flow, the EPE, and a figure of slices."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import numpy as np

from raftdvc_jax import metrics
from raftdvc_jax.data import io
from raftdvc_jax.data import masks
from raftdvc_jax.data import synthetic

# Synthetic pair per arm stride: bead radius, density and displacement band of the data that arm was trained on.
log = logging.getLogger(__name__)
PAIR_PRESETS = {2: 'r2_32', 4: 'r4_64', 8: 'r8_128'}


def make_pair(stride: int = 4, size: int | None = None, seed: int = 0, deformation: str | None = None,
              data: dict | None = None) -> dict:
  """A bead pair ({'I1', 'I2', 'flow', 'metadata'}) like the training data `data` (a SyntheticConfig dict,
  as shipped weights record it), else like the preset of the arm of `stride`; optionally at another size."""
  changes = {}
  if size is not None:
    changes['size'] = size
  if deformation is not None:
    changes['deformation'] = deformation
  if data:
    return synthetic.make_pair(synthetic.SyntheticConfig.from_dict(data).replace(**changes), seed)
  name = PAIR_PRESETS.get(int(stride))
  if name is None:
    raise ValueError(f'no demo pair for stride {stride}; strides with one: {sorted(PAIR_PRESETS)}')
  return synthetic.make_pair(synthetic.preset(name, **changes), seed)


def random_variables(cfg, seed: int = 0):
  """Randomly initialised weights of a network, for running the pipeline without trained ones."""
  import jax  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model.raft import init_params  # pylint: disable=import-outside-toplevel
  return jax.device_get(init_params(cfg, jax.random.key(seed), optimize=False))


def epe_stats(flow: np.ndarray, truth: np.ndarray, mask=None) -> dict:
  """End-point error statistics of a flow (3, X0, X1, X2) against the truth, over the mask if given."""
  flow, truth = np.asarray(flow, np.float32), np.asarray(truth, np.float32)
  if flow.shape != truth.shape or flow.ndim != 4 or flow.shape[0] != 3:
    raise ValueError(f'flow {flow.shape} and truth {truth.shape} must both be (3, X0, X1, X2)')
  epe = metrics.endpoint_error(flow, truth)
  mag = metrics.endpoint_error(truth, np.zeros_like(truth))
  if mask is not None:
    keep = masks.inside(mask)
    epe, mag = epe[keep], mag[keep]
  return {'epe_mean': float(epe.mean()), 'epe_median': float(np.median(epe)),
          'epe_p95': float(np.percentile(epe, 95)), 'epe_max': float(epe.max()),
          'truth_magnitude_mean': float(mag.mean()), 'truth_magnitude_max': float(mag.max())}


def save_figure(path, vol0, vol1, flow, truth, title: str | None = None) -> None:
  """Writes a PNG of the central axis-0 slice: reference, deformed, true |u|, estimated |u|, end-point error."""
  if os.path.splitext(os.fspath(path))[1].lower() != '.png':
    raise ValueError(f'{os.fspath(path)}: the demo figure must be a .png')
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  k = vol0.shape[0] // 2
  mag = np.sqrt((np.asarray(flow[:, k]) ** 2).sum(0))
  err = np.sqrt(((np.asarray(flow[:, k]) - np.asarray(truth[:, k])) ** 2).sum(0))
  true_mag = np.sqrt((np.asarray(truth[:, k]) ** 2).sum(0))
  flow_range = (0.0, float(max(mag.max(), true_mag.max(), 1e-6)))  # one scale for the true and estimated |u|
  panels = [('reference', vol0[k], 'gray', None), ('deformed', vol1[k], 'gray', None),
            ('true |u| (voxels)', true_mag, 'viridis', flow_range),
            ('estimated |u| (voxels)', mag, 'viridis', flow_range),
            ('end-point error (voxels)', err, 'magma', (0.0, float(max(err.max(), 1e-6))))]
  fig, axes = plt.subplots(1, len(panels), figsize=(20, 4.4), constrained_layout=True)
  for ax, (name, img, cmap, limits) in zip(axes, panels):
    im = ax.imshow(np.asarray(img), cmap=cmap, origin='upper',
                   **({} if limits is None else {'vmin': limits[0], 'vmax': limits[1]}))
    ax.set_title(name)
    ax.set_xlabel('array axis 2')
    ax.set_ylabel('array axis 1')
    fig.colorbar(im, ax=ax, shrink=0.8)
  where = f'slice {k} of {vol0.shape[0]} along array axis 0 (the central one)'
  fig.suptitle(f'{title}\n{where}' if title else where)
  try:
    with io.atomic_path(path) as tmp:
      fig.savefig(tmp, dpi=90, format='png')
  finally:
    plt.close(fig)


def run_demo(estimate: Callable[[np.ndarray, np.ndarray], np.ndarray], figure_path, stride: int = 4,
             size: int | None = None, seed: int = 0, trained: bool = True, label: str = '',
             data: dict | None = None) -> dict:
  """Makes a pair (make_pair), estimates its flow with estimate(vol0, vol1) -> (3, X0, X1, X2), scores it,
  draws it."""
  pair = make_pair(stride, size, seed, data=data)
  t0 = time.perf_counter()
  flow = np.asarray(estimate(pair['I1'], pair['I2']), np.float32)
  seconds = time.perf_counter() - t0
  stats = epe_stats(flow, pair['flow'])
  stats['epe_zero_flow'] = zero_flow_epe(pair['flow'])
  title = (f'{label or f"stride-{stride} arm"}: mean EPE {stats["epe_mean"]:.3f} voxels '
           f'(true |u| up to {stats["truth_magnitude_max"]:.1f})' + ('' if trained else ' - UNTRAINED WEIGHTS'))
  save_figure(figure_path, pair['I1'], pair['I2'], flow, pair['flow'], title)
  return {'shape': tuple(pair['I1'].shape), 'seed': seed, 'deformation': pair['metadata']['deformation'],
          'seconds': seconds, 'figure': os.fspath(figure_path), 'trained': trained, **stats}


def format_report(report: dict) -> str:
  """The demo's closing lines: what was estimated, the EPE against the truth, where the figure is."""
  shape = 'x'.join(map(str, report['shape']))
  lines = [f'synthetic {shape} bead pair ({report["deformation"]} field, seed {report["seed"]}, true |u| mean '
           f'{report["truth_magnitude_mean"]:.2f}, max {report["truth_magnitude_max"]:.2f} voxels)',
           f'EPE mean {report["epe_mean"]:.4f}, median {report["epe_median"]:.4f}, p95 {report["epe_p95"]:.4f}, '
           f'max {report["epe_max"]:.4f} voxels (predicting no motion: {report["epe_zero_flow"]:.4f}); '
           f'estimated in {report["seconds"]:.1f} s',
           f'figure: {report["figure"]}']
  if not report['trained']:
    lines.insert(0, 'NOTE: this ran randomly initialised weights, so the flow is meaningless and the EPE shows '
                    'only that the pipeline runs.')
  elif report['epe_mean'] > 0.9 * report['epe_zero_flow']:
    lines.insert(2, 'NOTE: these weights do not measure this pair: their EPE is no better than predicting no '
                    'motion (see the weights\' MODEL_CARD.md); add --refine for subset-based sub-voxel DVC.')
  return '\n'.join(lines)


def zero_flow_epe(truth: np.ndarray) -> float:
  """The EPE of predicting no motion: the baseline any estimate should beat."""
  return float(metrics.endpoint_error(truth, np.zeros_like(truth)).mean())



def random_estimator(seed: int = 0, correlation: str = 'auto', lookup: str = 'auto'):
  """A FlowEstimator of the s4 preset with randomly initialised weights (--checkpoint random): the pipeline
  runs, and with --refine the refinement's check of its guess takes over; it measures nothing itself."""
  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer.estimator import FlowEstimator
  from raftdvc_jax.model.config import preset
  log.warning('--checkpoint random: the s4 preset with randomly initialised weights; its flow shows that the '
              'pipeline runs, not how accurate it is.')
  config = preset('s4')
  return FlowEstimator(config, random_variables(config, seed), correlation=correlation, lookup=lookup,
                       provenance={'source': 'random', 'seed': seed})


def run_cli(make_pipeline: Callable, checkpoint: str | None, figure_path: str, size: int, seed: int,
            progress: bool) -> str:
  """infer.py --demo: the pair, its flow by make_pipeline(estimator, label), the figure; returns the report."""
  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer.estimator import load
  from raftdvc_jax import weights
  from raftdvc_jax.infer import tiled
  if checkpoint == 'random':
    estimator, label = random_estimator(seed), 's4, untrained'
  else:
    checkpoint = checkpoint or weights.DEFAULT  # the shipped starter weights
    estimator, label = load(checkpoint), checkpoint
  pipe = make_pipeline(estimator, label)
  stride = min(PAIR_PRESETS, key=lambda s: (abs(s - estimator.config.stride), s))
  pipe.check((size,) * 3, f'--demo_size {size}')

  def estimate(vol0, vol1):
    flow, summaries = pipe.estimate(vol0, vol1, None, progress)
    log.info(tiled.format_summary(summaries[-1]))
    return flow

  report = run_demo(estimate, figure_path, stride=stride, size=size, seed=seed, trained=checkpoint != 'random',
                    label=f'{label} (stride {estimator.config.stride})',
                    data=estimator.provenance.get('train_data'))
  return format_report(report)
