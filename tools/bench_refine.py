r"""Measures sub-voxel refinement (raftdvc_jax.refine): node EPE and time per pair, beside pyALDVC when installed.

  python tools/bench_refine.py                      # the issue 11 conditions, first and second order
  python tools/bench_refine.py --families translation --orders 1 --samples 1

Pairs (made here, never stored):
- bead families: raftdvc-make-dataset --size 64 --num_samples 2 --disp_min 0.5 --disp_max 3 --seed 1
  --deformation {translation, affine, quadratic} (noise on), i.e. SyntheticDataset(config, seed=(1,)).pair(i);
- Gaussian speckle (pyALDVC's `al-dvc synth --shape 64 64 64 --noise 0.02 --seed 3`): translation
  (x, y, z) = (1.25, -0.6, 2.3) and a 2 % stretch along x (-0.3 * 2 % along y, z), g(x) = f(X), x = X + u(X),
  clipped to [0, 1] and stored as uint16. With al_dvc importable its own generator makes them; otherwise this
  script's copy of the recipe (Gaussian-filtered noise, sigma 2, fixed-point inversion, quintic sampling).
Score: mean end-point error at the nodes 13, 17, ..., 49 on every axis (1000 nodes; pyALDVC's node set for
16-voxel subsets every 4 voxels in 64^3). Time: seconds per pair after a warm-up pair (compilation excluded
and reported apart), integer search included. pyALDVC (if `import al_dvc` works) runs with winsize 16, step 4,
B-spline interpolation, its warm-up first. Prints Markdown tables for docs/accuracy.md and docs/performance.md.
"""

from __future__ import annotations

import os
import platform
import time

from absl import app
from absl import flags
import numpy as np
from scipy import ndimage

from raftdvc_jax import cli
from raftdvc_jax.data import datasets
from raftdvc_jax.data import synthetic
from raftdvc_jax.refine import api

BEAD_FAMILIES = ('translation', 'affine', 'quadratic')
SPECKLE_FAMILIES = ('speckle_translation', 'speckle_stretch')
NODES = np.arange(13, 50, 4)

_FAMILIES = flags.DEFINE_list('families', list(BEAD_FAMILIES + SPECKLE_FAMILIES), 'Families to run.')
_SAMPLES = flags.DEFINE_integer('samples', 2, 'Bead pairs per family.', lower_bound=1)
_ORDERS = flags.DEFINE_list('orders', ['1', '2'], 'Shape-function orders to run.')
_SMOOTH = flags.DEFINE_float('smooth', api.SMOOTH, 'Gaussian pre-smoothing sigma of refine(), voxels.')
_REACH = flags.DEFINE_integer('search_reach', None, 'Integer search reach (default: refine()\'s).')
_PEER = flags.DEFINE_boolean('peer', True, 'Run pyALDVC too when al_dvc is importable.')
_FROM_FLOW = flags.DEFINE_boolean('from_flow', False,
                                  'Also run order 1 from flow_init = round(truth) without the integer search.')


def bead_pairs(family: str, samples: int):
  """The make_dataset pairs of one family: [(I1, I2, truth at the nodes (N, 3))]."""
  config = synthetic.SyntheticConfig(size=64, disp_min=0.5, disp_max=3.0, deformation=family, noise=True)
  source = datasets.SyntheticDataset(config, (1,))
  grid = node_grid()
  out = []
  for i in range(samples):
    pair = source.pair(i)
    out.append((pair['I1'], pair['I2'], pair['flow'][:, grid[:, 0], grid[:, 1], grid[:, 2]].T))
  return out


def node_grid() -> np.ndarray:
  """The scored nodes (N, 3) in array order."""
  return np.stack(np.meshgrid(NODES, NODES, NODES, indexing='ij'), -1).reshape(-1, 3)


def _speckle_field(family: str, shape):
  """u(X) in array order for the speckle families (pyALDVC's synth, converted from its x, y, z)."""
  centre = (np.asarray(shape, np.float64) - 1) / 2
  if family == 'speckle_translation':
    shift = np.array([2.3, -0.6, 1.25])  # (x, y, z) = (1.25, -0.6, 2.3) -> array axes (0, 1, 2) = (z, y, x)
    return lambda x: np.broadcast_to(shift.reshape((3,) + (1,) * (x.ndim - 1)), x.shape)
  strain = np.array([-0.3 * 0.02, -0.3 * 0.02, 0.02])  # diag(e, -0.3e, -0.3e) in (x, y, z)
  return lambda x: strain.reshape((3,) + (1,) * (x.ndim - 1)) * (x - centre.reshape((3,) + (1,) * (x.ndim - 1)))


def speckle_pair(family: str, size: int = 64, seed: int = 3, noise: float = 0.02):
  """(I1, I2, truth at the nodes, source) of a speckle family."""
  shape = (size,) * 3
  field = _speckle_field(family, shape)
  grid = node_grid()
  truth = field(grid.T.astype(np.float64)).T
  try:
    from al_dvc import synthetic as peer  # pylint: disable=import-outside-toplevel
    ref = peer.generate_speckle_volume(shape, sigma=2.0, seed=seed)
    fn = lambda x, y, z: tuple(field(np.stack([z, y, x]))[::-1])  # pyALDVC calls u(x, y, z) -> (u, v, w)
    frames = [ref, peer.warp_volume_lagrangian(ref, fn)]
    frames = [np.clip(peer.add_noise(v, noise, seed=100 + i), 0, 1) for i, v in enumerate(frames)]
    source = 'al_dvc.synthetic'
  except ImportError:
    rng = np.random.default_rng(seed)
    ref = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0, mode='nearest')
    ref = ((ref - ref.min()) / max(ref.max() - ref.min(), 1e-12)).astype(np.float32)
    x = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing='ij'))
    reference = x.copy()
    for _ in range(25):
      reference = x - field(reference)
    warped = ndimage.map_coordinates(ref.astype(np.float64), reference.reshape(3, -1), order=5, mode='nearest')
    frames = [ref, warped.reshape(shape).astype(np.float32)]
    frames = [np.clip(v + noise * np.random.default_rng(100 + i).standard_normal(shape).astype(np.float32), 0, 1)
              for i, v in enumerate(frames)]
    source = 'this script (al_dvc absent)'
  frames = [np.round(v * 65535).astype(np.uint16).astype(np.float32) / 65535 for v in frames]
  return frames[0], frames[1], truth, source


def epe(estimate, truth) -> float:
  """Mean end-point error over the nodes."""
  return float(np.linalg.norm(np.asarray(estimate, np.float64) - truth, axis=1).mean())


def run_ours(pairs, order: int, from_flow: bool = False):
  """[(epe, seconds, converged fraction, mean iterations)] per pair, and the warm-up seconds.

  from_flow: start from flow_init = the true field at the nodes rounded to whole voxels (a stand-in for a
  network's flow, to time the refinement without the integer search).
  """
  kwargs = dict(axes=(NODES,) * 3, order=order, smooth=_SMOOTH.value, batch_size=1000)
  kwargs['search_reach'] = 0 if from_flow else _REACH.value  # from the true field: no search, no check

  def flow_init(vol0, truth):
    if not from_flow:
      return None
    flow = np.zeros((3,) + vol0.shape, np.float32)
    grid = node_grid()
    flow[:, grid[:, 0], grid[:, 1], grid[:, 2]] = np.round(truth).T
    return flow

  start = time.perf_counter()
  api.refine(pairs[0][0], pairs[0][1], flow_init(pairs[0][0], pairs[0][2]), **kwargs)
  warm = time.perf_counter() - start
  rows = []
  for vol0, vol1, truth in pairs:
    init = flow_init(vol0, truth)
    start = time.perf_counter()
    result = api.refine(vol0, vol1, init, **kwargs)
    rows.append((epe(result.nodes.displacement, truth), time.perf_counter() - start,
                 float(result.nodes.converged.mean()), float(result.nodes.iterations.mean())))
  return rows, warm


def run_peer(pairs):
  """pyALDVC 16/4 B-spline: [(epe, seconds)] per pair, or None when al_dvc is not importable."""
  try:
    import al_dvc  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None, None
  warm = al_dvc.warmup()
  para = al_dvc.dvcpara_default(winsize=16, winstepsize=4, interp_method='bspline', verbose=False)
  rows = []
  for vol0, vol1, truth in pairs:
    start = time.perf_counter()
    res = al_dvc.run_aldvc(para, [vol0, vol1], compute_strain=False, progress_fn=lambda f, m: None)
    seconds = time.perf_counter() - start
    coords = np.asarray(res.dvc_mesh.coordinates)[:, ::-1]  # (x, y, z) -> array order
    disp = np.asarray(res.result_disp[0].U)[:, ::-1]
    index = {tuple(np.round(c).astype(int)): k for k, c in enumerate(coords)}
    take = [index[tuple(n)] for n in node_grid()]
    rows.append((epe(disp[take], truth), seconds))
  return rows, warm


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  unknown = set(_FAMILIES.value) - set(BEAD_FAMILIES + SPECKLE_FAMILIES)
  if unknown:
    raise app.UsageError(f'unknown families: {sorted(unknown)}')
  import jax  # pylint: disable=import-outside-toplevel
  print(f'# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}; '
        f'load average {os.getloadavg()[0]:.1f}; subsets 16, step 4, nodes 13..49 (1000), '
        f'smooth {_SMOOTH.value}, search reach {_REACH.value or api.SEARCH_REACH}', flush=True)
  print('| family | method | node EPE per pair | mean | s per pair | converged | iterations |')
  print('|---|---|---|---|---|---|---|', flush=True)
  warmups = []
  for family in _FAMILIES.value:
    if family in BEAD_FAMILIES:
      pairs = bead_pairs(family, _SAMPLES.value)
    else:
      vol0, vol1, truth, source = speckle_pair(family)
      pairs = [(vol0, vol1, truth)]
      print(f'<!-- {family} made by {source} -->')
    runs = [(int(o), False) for o in _ORDERS.value] + ([(1, True)] if _FROM_FLOW.value else [])
    for order, from_flow in runs:
      rows, warm = run_ours(pairs, order, from_flow)
      warmups.append((family, order, warm))
      e = [r[0] for r in rows]
      label = f'refine, order {order}' + (', from round(truth), no search' if from_flow else '')
      print(f'| {family} | {label} | {", ".join(f"{x:.4f}" for x in e)} | {np.mean(e):.4f} | '
            f'{np.mean([r[1] for r in rows]):.2f} | {np.mean([r[2] for r in rows]):.3f} | '
            f'{np.mean([r[3] for r in rows]):.1f} |', flush=True)
    if _PEER.value:
      peer, warm = run_peer(pairs)
      if peer is not None:
        e = [r[0] for r in peer]
        print(f'| {family} | pyALDVC 16/4 bspline | {", ".join(f"{x:.4f}" for x in e)} | {np.mean(e):.4f} | '
              f'{np.mean([r[1] for r in peer]):.2f} | - | - |', flush=True)
  print('# first call per family and order (compile + run), s: ' +
        ', '.join(f'{f}/{o} {w:.1f}' for f, o, w in warmups))


if __name__ == '__main__':
  cli.start(main)
