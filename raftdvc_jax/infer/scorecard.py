"""Held-out accuracy of an estimator per deformation family and displacement band, beside no motion.

Two suites: pairs of raftdvc_jax.data.synthetic (the training generator, fresh seeds) per family and band, and
pairs of raftdvc_jax.data.blobs (another generator with other fields). Every cell reports the mean end-point
error over all voxels of its pairs and the same for predicting zero flow.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import numpy as np

from raftdvc_jax.data import blobs, synthetic

SYNTHETIC_FAMILIES = ('translation', 'rotation', 'affine', 'quadratic', 'smooth')
BANDS = ((0.25, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0))
# Large moves (the reach of an arm, or of coarse-to-fine), in voxels of the largest component.
REACH_BANDS = ((2.0, 6.0), (6.0, 12.0), (12.0, 18.0), (18.0, 24.0))
REACH_FAMILIES = ('translation', 'rotation')
# Held-out seeds: training streams use (seed, crc32(split), ...) tuples, these use a distinct first entry.
HELDOUT_SEED = 20261129


@dataclasses.dataclass
class Cell:
  """One row of the scorecard."""

  suite: str
  family: str
  band: str
  pairs: int
  epe: float
  zero_epe: float

  @property
  def ratio(self) -> float:
    return self.epe / self.zero_epe if self.zero_epe > 0 else float('nan')


def _epe(flow, gt) -> float:
  return float(np.sqrt(np.square(np.asarray(flow, np.float64) - gt).sum(0)).mean())


def score_pairs(predict: Callable, pairs: Iterable[dict]) -> tuple[int, float, float]:
  """(count, mean EPE, mean no-motion EPE) of predict(vol0, vol1) -> (3, X0, X1, X2) over `pairs`."""
  epe, zero, n = [], [], 0
  for pair in pairs:
    epe.append(_epe(predict(pair['I1'], pair['I2']), pair['flow']))
    zero.append(_epe(np.zeros_like(pair['flow']), pair['flow']))
    n += 1
  return n, float(np.mean(epe)), float(np.mean(zero))


def synthetic_cells(predict: Callable, size: int = 64, per_cell: int = 2,
                    families: Sequence[str] = SYNTHETIC_FAMILIES, bands=BANDS, progress=None) -> list[Cell]:
  """Cells of the training generator (particle radius 2, density 4.8, noise on) on fresh seeds."""
  cells = []
  for family in families:
    for b, (lo, hi) in enumerate(bands):
      cfg = synthetic.SyntheticConfig(size=size, particle_radius=2.0, density=4.8, disp_min=lo, disp_max=hi,
                                      deformation=family)
      pairs = (synthetic.make_pair(cfg, (HELDOUT_SEED, b, i)) for i in range(per_cell))
      cells.append(Cell('synthetic', family, f'{lo:g}-{hi:g}', *score_pairs(predict, pairs)))
      if progress:
        progress()
  return cells


def reach_cells(predict: Callable, size: int = 64, per_cell: int = 2, families: Sequence[str] = REACH_FAMILIES,
                bands=REACH_BANDS, progress=None) -> list[Cell]:
  """Cells of large moves (REACH_BANDS): the training generator's beads on fresh seeds, other seeds than
  synthetic_cells'."""
  cells = []
  for family in families:
    for b, (lo, hi) in enumerate(bands):
      cfg = synthetic.SyntheticConfig(size=size, particle_radius=2.0, density=4.8, disp_min=lo, disp_max=hi,
                                      deformation=family)
      pairs = (synthetic.make_pair(cfg, (HELDOUT_SEED, 100 + b, i)) for i in range(per_cell))
      cells.append(Cell('reach', family, f'{lo:g}-{hi:g}', *score_pairs(predict, pairs)))
      if progress:
        progress()
  return cells


def blob_cells(predict: Callable, size: int = 64, per_cell: int = 2, amplitudes: Sequence[float] = (1.0, 2.5),
               progress=None) -> list[Cell]:
  """Cells of the Gaussian-blob generator, per field and maximum displacement component."""
  cells = []
  for kind in blobs.FIELDS:
    for a, amplitude in enumerate(amplitudes):
      pairs = (blobs.make_pair(kind, size, amplitude, (HELDOUT_SEED, a, i)) for i in range(per_cell))
      cells.append(Cell('blobs', kind, f'{amplitude:g}', *score_pairs(predict, pairs)))
      if progress:
        progress()
  return cells


def markdown(cells: Sequence[Cell]) -> str:
  """A Markdown table of the cells (EPE, no-motion EPE and their ratio)."""
  rows = ['| suite | family | max displacement [voxel] | pairs | EPE | no-motion EPE | ratio |',
          '|---|---|---|---|---|---|---|']
  rows += [f'| {c.suite} | {c.family} | {c.band} | {c.pairs} | {c.epe:.3f} | {c.zero_epe:.3f} | {c.ratio:.2f} |'
           for c in cells]
  return '\n'.join(rows)
