"""Sub-voxel refinement of a displacement field: subsets on a node grid, IC-GN, back to a dense field."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import interpolate
from scipy import ndimage

from raftdvc_jax import batching
from raftdvc_jax.data import io as data_io
from raftdvc_jax.refine import bspline
from raftdvc_jax.refine import dense
from raftdvc_jax.refine import icgn
from raftdvc_jax.refine import search
from raftdvc_jax.refine import shape

log = logging.getLogger(__name__)

# Defaults: the classical peers' setting in issue 11 (16-voxel subsets every 4 voxels, B-spline).
SUBSET = 16
STEP = 4
ORDER = 1
SEARCH_REACH = 8  # voxels, the first reach of the search used when no initial flow is given
# Nodes whose best match in that reach is weaker than WIDEN_ZNCC are searched again with wider reaches, so a
# rigid move of up to the last reach is found without being told its size (pyALDVC also widens by itself).
WIDEN_REACHES = (16, 24)
WIDEN_ZNCC = 0.8
# A given initial flow (a network's) is checked: an integer search GUESS_REACH voxels around it; where the best
# ZNCC there is below GUESS_ZNCC the node falls back to the search without a network. So a wrong network guess
# can cost time, never the answer.
GUESS_REACH = 2
GUESS_ZNCC = 0.8
SEARCH_STRIDE = 2  # the search runs on every 2nd node per axis; the others interpolate its result
MAX_ITER = 30
TOL = 5e-4  # voxels: stop when an update moves no point of the subset by more than this
MIN_ZNCC = 0.7
TEXTURE_TOL = 1e-3  # a subset whose intensity spread is below this fraction of vol0's is featureless
BATCH_SIZE = 128
# Default nodes keep their subsets this many voxels from the faces: near a face the spline's mirror boundary
# condition differs from the unseen content, and interpolation there is less exact (64^3, 16/4: nodes 13..49).
EDGE_MARGIN = 4
SMOOTH = 0.0  # Gaussian pre-smoothing sigma, voxels (0.7 lowers noise a little, but biases curved warps)
# Gaussian sigma (voxels) of the vol0 copy the Gauss-Newton gradient comes from. 0.7 helps noisy smooth speckle
# (ZNCC 0.92: 16 -> 5 iterations) but slows bead pairs (4 -> 10), so it is off by default (docs/accuracy.md).
GRADIENT_SMOOTH = 0.0
NODE_FILTER = 5  # nodes per quadratic Savitzky-Golay window over the lattice (0: off)


@dataclasses.dataclass(frozen=True)
class NodeResult:
  """Per-node refinement record. Arrays are indexed by node; nodes run over the lattice in C order."""

  axes: tuple  # three int arrays: node coordinates on each array axis (a regular lattice)
  positions: np.ndarray  # (N, 3) float32 voxel coordinates of the nodes (array order)
  displacement: np.ndarray  # (N, 3) float32, channel c along array axis c: the final node values (filled, filtered)
  measured: np.ndarray  # (N, 3) float32, IC-GN's result at each node before filling and filtering
  gradient: np.ndarray  # (N, 3, 3) float32 du_c/dx_j at the node
  coefficients: np.ndarray  # (N, 3, 10) float32 u_c(x) = sum_k coef[c, k] m_k(x - node), voxel units
  correlation: np.ndarray  # (N,) float32 ZNCC of the final subset match
  converged: np.ndarray  # (N,) bool
  iterations: np.ndarray  # (N,) int32
  status: np.ndarray  # (N,) int32, see icgn.STATUS_NAMES
  initial: np.ndarray  # (N, 3) float32 initial guess
  fell_back: np.ndarray  # (N,) bool: the given flow was a poor guess here, so the search's result was used
  node_filter: int
  smooth: float
  subset: int
  step: int
  order: int
  search_reach: int

  @property
  def lattice_shape(self) -> tuple[int, int, int]:
    """Nodes per axis."""
    return tuple(len(a) for a in self.axes)

  def arrays(self) -> dict[str, np.ndarray]:
    """Everything as named numpy arrays (what write_nodes stores)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != 'axes'}
    out.update({f'axis{i}': np.asarray(a, np.int32) for i, a in enumerate(self.axes)})
    out['status_names'] = np.array([icgn.STATUS_NAMES[k] for k in sorted(icgn.STATUS_NAMES)])
    return {k: np.asarray(v) for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class Refinement:
  """A refined dense flow, float32 (3, X0, X1, X2), and the per-node record it was built from."""

  flow: np.ndarray
  nodes: NodeResult


def default_axes(shape: Sequence[int], subset: int = SUBSET, step: int = STEP) -> tuple:
  """Node coordinates on each axis: every `step` voxels, centred, each subset EDGE_MARGIN voxels inside."""
  half = subset // 2
  axes = []
  for n in shape:
    lo, hi = half + EDGE_MARGIN, int(n) - 1 - half - EDGE_MARGIN
    if hi < lo:
      raise ValueError(f'a volume of shape {tuple(shape)} is too small for {subset}-voxel subsets')
    count = (hi - lo) // step + 1
    start = lo + ((hi - lo) - (count - 1) * step) // 2
    axes.append(np.arange(start, start + count * step, step, dtype=np.int64)[:count])
  return tuple(axes)


def _check_inputs(vol0, vol1, flow_init, subset, step, order):
  v0, v1 = np.asarray(vol0), np.asarray(vol1)
  for name, v in (('vol0', v0), ('vol1', v1)):
    if v.ndim != 3:
      raise ValueError(f'{name} must be a 3-D volume (X0, X1, X2), got shape {v.shape}')
    if v.dtype.kind not in 'biuf':
      raise ValueError(f'{name} must hold numbers, got dtype {v.dtype}')
    if not np.isfinite(v).all():
      raise ValueError(f'{name} holds NaN or infinite values')
  if v0.shape != v1.shape:
    raise ValueError(f'vol0 and vol1 differ in shape: {v0.shape} vs {v1.shape}')
  if flow_init is not None:
    flow_init = np.asarray(flow_init, np.float32)
    if flow_init.shape != (3,) + v0.shape:
      raise ValueError(f'flow_init must have shape {(3,) + v0.shape}, got {flow_init.shape}')
    if not np.isfinite(flow_init).all():
      raise ValueError('flow_init holds NaN or infinite values')
  if not (isinstance(subset, (int, np.integer)) and subset >= 4):
    raise ValueError(f'subset must be an integer >= 4 voxels, got {subset!r}')
  if not (isinstance(step, (int, np.integer)) and step >= 1):
    raise ValueError(f'step must be an integer >= 1 voxel, got {step!r}')
  if order not in (1, 2):
    raise ValueError(f'order must be 1 (affine) or 2 (quadratic), got {order!r}')
  return v0.astype(np.float32), v1.astype(np.float32), flow_init


def _check_axes(axes, shape, half):
  out = []
  for i, a in enumerate(axes):
    a = np.asarray(a)
    if a.ndim != 1 or len(a) == 0 or not np.all(a == np.round(a)):
      raise ValueError(f'node axis {i} must be a non-empty 1-D list of integer coordinates')
    a = a.astype(np.int64)
    if a.min() < half or a.max() > shape[i] - 1 - half:
      raise ValueError(f'node axis {i} must lie in [{half}, {shape[i] - 1 - half}] so subsets fit in the volume')
    d = np.diff(a)
    if len(d) and not (d[0] > 0 and np.all(d == d[0])):
      raise ValueError(f'node axis {i} must be evenly spaced and increasing')
    out.append(a)
  return tuple(out)


def _to_voxel_coefficients(params: np.ndarray, half: int) -> np.ndarray:
  """Normalised shape parameters (.., 3, 10) -> coefficients of monomials of (x - node) in voxels."""
  degree = np.array([0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
  return params * float(half) ** (1 - degree)


class _Search:
  """FFT ZNCC integer searches at the coarse nodes (every stride-th node per axis, and the last), spread to all."""

  def __init__(self, vol0_d, v1, axes, half, stride, batch_size, max_reach):
    self.vol0_d, self.half = vol0_d, half
    self.lattice_shape = tuple(len(a) for a in axes)
    self.picks = [np.unique(np.r_[np.arange(0, m, stride), m - 1]) for m in self.lattice_shape]
    self.nodes = np.stack(np.meshgrid(*[a[p] for a, p in zip(axes, self.picks)], indexing='ij'), -1).reshape(-1, 3)
    self.flat = np.ravel_multi_index(np.stack(np.meshgrid(*self.picks, indexing='ij'), -1).reshape(-1, 3).T,
                                     self.lattice_shape)
    # One batch size for every search, the full one's: a later search of fewer nodes reuses its program.
    self.batch = batching.even_size(len(self.nodes), batch_size)
    self.pad = half + max_reach + 1
    self.vol1_padded = jnp.asarray(bspline.reflect_pad(v1, self.pad))

  def run(self, which, centre, reach):
    """(best integer shift (n, 3), its ZNCC (n,)) of coarse nodes `which` within `reach` of `centre`, which
    holds a centre for every coarse node (n_coarse, 3)."""
    shifts, znccs = [], []
    for idx, _ in batching.padded_chunks(list(which), self.batch):
      shift, zncc = search.search_batch(self.vol0_d, self.vol1_padded, jnp.asarray(self.nodes[idx], jnp.int32),
                                        jnp.asarray(centre[idx]), half=self.half, reach=reach, pad=self.pad)
      shifts.append(np.asarray(shift))
      znccs.append(np.asarray(zncc))
    n = len(which)
    return np.concatenate(shifts)[:n].astype(np.float64), np.concatenate(znccs)[:n]

  def wide(self, which, centre):
    """The search without a guess: SEARCH_REACH, then wider reaches for the nodes that matched weakly.

    Returns (shift, ZNCC, the widest reach that ran)."""
    which = np.asarray(which)
    shift, zncc = self.run(which, centre, SEARCH_REACH)
    widest = SEARCH_REACH
    for reach in WIDEN_REACHES:
      weak = np.flatnonzero(zncc < WIDEN_ZNCC)
      if not len(weak):
        break
      s2, z2 = self.run(which[weak], centre, reach)
      widest = reach
      better = z2 > zncc[weak]
      shift[weak[better]], zncc[weak[better]] = s2[better], z2[better]
    return shift, zncc, widest

  def spread(self, coarse_values):
    """Values (n_coarse, D) at the coarse nodes, trilinearly interpolated to every node (N, D)."""
    values = coarse_values.T.reshape((-1,) + tuple(len(p) for p in self.picks))
    fine = np.stack(np.meshgrid(*[np.arange(m, dtype=np.float64) for m in self.lattice_shape], indexing='ij'),
                    -1).reshape(-1, 3)
    return np.stack([interpolate.RegularGridInterpolator(self.picks, v)(fine) for v in values], -1)


def _initial_guesses(searcher, flow_init, grid, reach: int | None):
  """(rounded initial displacement (N, 3), per node whether it fell back from flow_init, the reach recorded).

  reach None: flow_init at the nodes is checked (GUESS_REACH around it) and, where weak, replaced by the wide
  search; without flow_init the wide search runs. An explicit reach searches that far around the guess (or
  zero) and nothing else.
  """
  count = len(grid)
  guess_given, checked = flow_init is not None, reach is None and flow_init is not None
  initial = (flow_init[:, grid[:, 0], grid[:, 1], grid[:, 2]].T.astype(np.float32) if guess_given
             else np.zeros((count, 3), np.float32))
  if reach == 0:  # the guess (or zero) as given, at every node
    return initial, np.zeros(count, bool), 0
  coarse = np.arange(len(searcher.nodes))
  centre = np.round(initial[searcher.flat]).astype(np.int32)
  fell_back = np.zeros(len(coarse), bool)
  if reach is not None:
    shift = searcher.run(coarse, centre, reach)[0]
  elif not guess_given:
    shift, _, reach = searcher.wide(coarse, centre)
  else:
    shift, zncc = searcher.run(coarse, centre, GUESS_REACH)
    weak = np.flatnonzero(zncc < GUESS_ZNCC)
    if len(weak):
      # The search replaces a weak guess only where it matches better: a featureless subset (zero everywhere)
      # or a move beyond the search's reach keeps the network's guess.
      s2, z2, reach = searcher.wide(weak, np.zeros_like(centre))
      better = z2 > zncc[weak]
      shift[weak[better]] = s2[better]
      fell_back[weak[better]] = True
  spread = searcher.spread(np.concatenate([shift, fell_back[:, None].astype(np.float64)], 1))
  fell_back = spread[:, 3].reshape(count) >= 0.5  # nodes mostly interpolated from coarse nodes that fell back
  if checked:
    # Shown by default when it happens: the user should know their network's guess was poor here.
    (log.warning if fell_back.any() else log.info)(
        'refine: %d of %d nodes fell back from the given flow to the search (best ZNCC within %d voxels of it '
        'below %g)', int(fell_back.sum()), count, GUESS_REACH, GUESS_ZNCC)
  return np.round(spread[:, :3]).astype(np.float32), fell_back, int(GUESS_REACH if reach is None else reach)


def refine(vol0, vol1, flow_init=None, *, subset: int = SUBSET, step: int = STEP, order: int = ORDER,
           search_reach: Optional[int] = None, axes=None, max_iter: int = MAX_ITER, tol: float = TOL,
           min_zncc: float = MIN_ZNCC, batch_size: int = BATCH_SIZE, smooth: float = SMOOTH,
           search_stride: int = SEARCH_STRIDE, node_filter: int = NODE_FILTER,
           gradient_smooth: float = GRADIENT_SMOOTH) -> Refinement:
  """Refines the displacement vol0 -> vol1 to sub-voxel precision; returns a Refinement (flow, nodes).

  Subsets of subset + 1 voxels a side (half-width subset // 2) centred on a node lattice every `step`
  voxels (or the given `axes`), first- (order=1, 12 parameters) or second-order (order=2, 30) shape
  functions, IC-GN on the ZNSSD criterion with vol1's cubic B-spline, after an optional Gaussian
  pre-smoothing of both volumes (smooth, sigma in voxels; gradient_smooth blurs only the copy of vol0 the
  Gauss-Newton matrix comes from). Initial guess, from an FFT ZNCC integer search on every
  search_stride-th node per axis, interpolated to the others: without flow_init, within SEARCH_REACH voxels,
  widened to WIDEN_REACHES where the best ZNCC is below WIDEN_ZNCC; with flow_init, within GUESS_REACH voxels
  of it, and where the best ZNCC there is below GUESS_ZNCC the node falls back to the search without a flow
  (NodeResult.fell_back), so a poor guess never costs the answer. An explicit search_reach searches that far
  around flow_init (or zero) and nothing else. Nodes that do not converge are filled
  from their neighbours and reported in the NodeResult; a quadratic Savitzky-Golay filter of node_filter
  nodes per axis (exact for fields of degree <= 2) and a cubic-spline interpolation then give the dense
  field (see dense.py). Nodes run in batches of at most batch_size (memory ~ batch * (subset+1)^3 * 400 bytes).
  """
  v0, v1, flow_init = _check_inputs(vol0, vol1, flow_init, subset, step, order)
  if smooth > 0:
    v0, v1 = (ndimage.gaussian_filter(v, smooth, mode='mirror') for v in (v0, v1))
  half = int(subset) // 2
  n = 2 * half + 1
  axes = default_axes(v0.shape, subset, step) if axes is None else _check_axes(axes, v0.shape, half)
  if search_reach is not None and search_reach < 0:
    raise ValueError(f'search_reach must be >= 0, got {search_reach}')
  if smooth < 0 or node_filter < 0 or search_stride < 1:
    raise ValueError('need smooth >= 0, node_filter >= 0 and search_stride >= 1')
  grid = np.stack(np.meshgrid(*axes, indexing='ij'), -1).reshape(-1, 3)
  count = len(grid)

  coef1 = jnp.asarray(bspline.prefilter(v1))
  vol1_padded = jnp.asarray(bspline.reflect_pad(v1, bspline.PAD))
  # The Gauss-Newton matrix comes from vol0's gradient. Noise in it inflates that matrix and shrinks every
  # step; from a lightly smoothed vol0 it does not. The residual stays unsmoothed, and a symmetric blur's
  # gradient is uncorrelated with the noise at the same voxel, so the fixed point keeps no bias.
  source = ndimage.gaussian_filter(v0, gradient_smooth, mode='mirror') if gradient_smooth > 0 else v0
  grad0 = jnp.asarray(bspline.grid_gradient(bspline.prefilter(source)))
  vol0_d = jnp.asarray(v0)
  texture_floor = np.float32(TEXTURE_TOL * float(v0.std()) * math.sqrt(n ** 3))
  searcher = None if search_reach == 0 else _Search(vol0_d, v1, axes, half, search_stride, batch_size,
                                                    max(WIDEN_REACHES) if search_reach is None else int(search_reach))
  initial, fell_back, reach = _initial_guesses(searcher, flow_init, grid, search_reach)

  shifts = np.round(initial).astype(np.int32)
  results = []
  for idx, _ in batching.padded_chunks(range(count), batching.even_size(count, batch_size)):
    out = icgn.solve_batch(vol0_d, grad0, vol1_padded, coef1, jnp.asarray(grid[idx], jnp.int32),
                           jnp.asarray(shifts[idx]), texture_floor, np.float32(tol), np.float32(min_zncc),
                           half=half, order=order, max_iter=int(max_iter), pad=bspline.PAD)
    results.append(jax.device_get(out))
  params, zncc, iters, status = (np.concatenate([r[i] for r in results])[:count] for i in range(4))

  coefficients = _to_voxel_coefficients(params, half).astype(np.float32)
  converged = status == icgn.OK
  lattice_shape = tuple(len(a) for a in axes)
  values = coefficients[:, :, 0].T.reshape((3,) + lattice_shape)
  if not converged.any():
    log.warning('refine: no node converged; the dense field is built from the raw node values')
  values = dense.filter_nodes(dense.fill_invalid(values, converged.reshape(lattice_shape)), node_filter)
  final = values.reshape(3, -1).T.astype(np.float32)
  nodes = NodeResult(
      axes=axes, positions=grid.astype(np.float32), displacement=final, measured=coefficients[:, :, 0].copy(),
      gradient=coefficients[:, :, 1:4].copy(), coefficients=coefficients, correlation=zncc.astype(np.float32),
      converged=converged, iterations=iters.astype(np.int32), status=status.astype(np.int32),
      initial=initial.astype(np.float32), fell_back=fell_back, subset=int(subset), step=int(step), order=int(order),
      search_reach=reach, node_filter=int(node_filter), smooth=float(smooth))
  flow = dense.to_dense(values, axes, v0.shape)
  counts = {icgn.STATUS_NAMES[k]: int(np.sum(status == k)) for k in icgn.STATUS_NAMES if np.any(status == k)}
  log.info('refine: %d nodes, %d converged, %d filled from neighbours %s; mean %.1f iterations',
           count, int(converged.sum()), int(count - converged.sum()), counts, float(iters.mean()))
  return Refinement(flow=flow, nodes=nodes)


def refine_estimate(estimator: Any, vol0, vol1, **kwargs) -> Refinement:
  """Runs a FlowEstimator (or any callable (vol0, vol1) -> flow) and refines its flow; kwargs go to refine."""
  return refine(vol0, vol1, flow_init=estimator(vol0, vol1), **kwargs)


def nodes_path(flow_path) -> str:
  """The per-node file beside a flow file: flow.npy -> flow_nodes.npz (a suffix-less path gets _nodes.npz)."""
  path = os.fspath(flow_path).rstrip(os.sep)
  root, ext = os.path.splitext(path)
  if ext.lower() == '.gz':  # e.g. .nii.gz
    root = os.path.splitext(root)[0]
  return root + '_nodes.npz'


def write_nodes(nodes: NodeResult, flow_path, overwrite: bool = False) -> str:
  """Writes the per-node record beside flow_path (see nodes_path), atomically; returns its path."""
  path = nodes_path(flow_path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f'{path}: exists; pass overwrite=True (--overwrite) to replace it')
  data_io.write_npz(path, nodes.arrays())
  return path


def read_nodes(path) -> dict[str, np.ndarray]:
  """The arrays of a _nodes.npz file."""
  with np.load(os.fspath(path), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}
