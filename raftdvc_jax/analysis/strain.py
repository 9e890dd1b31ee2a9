"""Deformation gradient and strain measures of a flow, computed in JAX slab by slab with bounded memory.

The volume is cut into slabs of whole planes along array axis 0; each slab is read with a halo of planes on
both sides, padded to one fixed shape with invalid voxels (so every slab, the last included, runs the same
compiled function), sent to the device once and its fields written back once. All tensors use array-axis
indices: F[i, j] = delta_ij + d(u_i h_i) / d(X_j h_j), h the voxel size.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from raftdvc_jax.analysis import gradient
from raftdvc_jax.analysis import tensors
from raftdvc_jax.data import masks

log = logging.getLogger(__name__)

MEASURES = ('green_lagrange', 'small_strain', 'euler_almansi')
TENSORS = ('F',) + MEASURES
SCALARS = ('volumetric_strain', 'von_mises_strain', 'max_shear_strain', 'rotation_angle',
           'displacement_magnitude')


@dataclasses.dataclass(frozen=True)
class StrainOptions:
  """What to compute: the fit window (voxels; <= 1 for central differences), which tensor the principal,
  von Mises and shear values come from, and the optional outputs."""
  window: int = 0
  measure: str = 'green_lagrange'
  euler_almansi: bool = False
  principal_directions: bool = False

  def __post_init__(self):
    if self.measure not in MEASURES:
      raise ValueError(f'unknown strain measure {self.measure!r}; use one of {", ".join(MEASURES)}')
    if self.window > 1 and self.window % 2 == 0:
      raise ValueError(f'the fit window must be odd (a voxel and the same number on each side), got {self.window}')
    if self.window < 0:
      raise ValueError(f'the fit window must be >= 0, got {self.window}')


def field_shapes(options: StrainOptions, grid) -> dict[str, tuple[int, ...]]:
  """Name -> shape of every field `options` asks for, on a grid (X0, X1, X2)."""
  grid = tuple(int(g) for g in grid)
  shapes = {'F': (3, 3) + grid, 'green_lagrange': (3, 3) + grid, 'small_strain': (3, 3) + grid}
  if options.euler_almansi or options.measure == 'euler_almansi':
    shapes['euler_almansi'] = (3, 3) + grid
  shapes['principal_strains'] = (3,) + grid
  if options.principal_directions:
    shapes['principal_directions'] = (3, 3) + grid
  shapes.update({name: grid for name in SCALARS})
  shapes['displacement'] = (3,) + grid
  return shapes


def _stack(t):
  return jnp.stack([jnp.stack(row) for row in t])


def _fields(u, m, voxel_size, options: StrainOptions):
  """Every field of one padded block (u (3, ...) float32, m (...) bool), on its inner region."""
  h = gradient.halo(options.window)
  grads = gradient.displacement_gradient(u, m, options.window)
  f = gradient.deformation_gradient(grads, voxel_size)
  valid = jnp.isfinite(f[0][0])
  for i in range(3):
    for j in range(3):
      valid &= jnp.isfinite(f[i][j])
  eye = tensors.identity_like(f[0][0])
  # Solve on identity where invalid (NaN would poison nothing, but keeps the iterations finite), NaN after.
  fs = [[jnp.where(valid, f[i][j], eye[i][j]) for j in range(3)] for i in range(3)]
  hgrad = tensors.add(fs, eye, -1.0)
  out = {'F': fs,
         'small_strain': tensors.scale(tensors.add(hgrad, tensors.transpose(hgrad)), 0.5),
         'green_lagrange': tensors.scale(tensors.add(tensors.matmul(tensors.transpose(fs), fs), eye, -1.0), 0.5)}
  if options.euler_almansi or options.measure == 'euler_almansi':
    finv = tensors.inverse(fs)
    out['euler_almansi'] = tensors.scale(tensors.add(eye, tensors.matmul(tensors.transpose(finv), finv), -1.0),
                                         0.5)
  e = out[options.measure]
  values, vectors = tensors.sym_eigen(e)
  nan = jnp.float32(jnp.nan)

  def masked(x):
    return jnp.where(valid, x, nan)

  result = {name: masked(_stack(t)) for name, t in out.items()}
  result['principal_strains'] = masked(jnp.stack(values))
  if options.principal_directions:
    result['principal_directions'] = masked(_stack(vectors))
  result['volumetric_strain'] = masked(tensors.det(fs) - 1.0)
  result['von_mises_strain'] = masked(tensors.von_mises_equivalent(e))
  result['max_shear_strain'] = masked(0.5 * (values[0] - values[2]))
  result['rotation_angle'] = masked(tensors.rotation_angle_deg(fs))
  inner = u[:, h:u.shape[1] - h, h:u.shape[2] - h, h:u.shape[3] - h]
  disp = jnp.stack([inner[c] * voxel_size[c] for c in range(3)])
  m_in = m[h:m.shape[0] - h, h:m.shape[1] - h, h:m.shape[2] - h]
  result['displacement'] = jnp.where(m_in, disp, nan)
  result['displacement_magnitude'] = jnp.where(m_in, jnp.sqrt(jnp.sum(disp * disp, axis=0)), nan)
  return {k: v.astype(jnp.float32) for k, v in result.items()}


@functools.lru_cache(maxsize=16)
def _compiled(options: StrainOptions):
  """The jitted block function of one option set; the voxel size is an argument, so it never recompiles."""
  def run(u, m, voxel_size):
    h = gradient.halo(options.window)
    # Pad the two in-plane axes with invalid voxels; axis 0 arrives padded by the reader.
    u = jnp.pad(u, ((0, 0), (0, 0), (h, h), (h, h)))
    m = jnp.pad(m, ((0, 0), (h, h), (h, h)))
    return _fields(u, m, voxel_size, options)
  return jax.jit(run)


def slab_planes(grid, options: StrainOptions, budget_bytes: int = 1 << 30) -> int:
  """Planes per slab so that one slab's inputs, temporaries and outputs stay near budget_bytes."""
  per_voxel = 4 * (sum(int(np.prod(s[:-3])) for s in field_shapes(options, (1, 1, 1)).values()) + 4)
  per_voxel *= 3  # XLA temporaries of the fused formulas, measured at about twice the outputs
  plane = int(grid[1]) * int(grid[2]) * per_voxel
  return int(max(1, min(int(grid[0]), budget_bytes // max(plane, 1))))


def compute(flow, voxel_size, options: StrainOptions = StrainOptions(), mask=None,
            sink: Callable[[int, int, Mapping[str, np.ndarray]], None] | None = None,
            planes: int | None = None, budget_bytes: int = 1 << 30):
  """Computes every field of a flow (3, X0, X1, X2) in voxels, slab by slab.

  voxel_size: (h0, h1, h2) per array axis. mask: optional (X0, X1, X2), >= 0.5 = valid (data.masks); fields are NaN
  outside it and stencils never reach across it. flow and mask may be memory-mapped: only one slab (with
  its halo) is read at a time. With sink, sink(start, stop, fields) receives each slab's numpy fields
  (planes start:stop of axis 0) and nothing is kept; without it, a dict of whole numpy arrays is returned.
  """
  grid = tuple(int(s) for s in flow.shape[1:])
  if len(flow.shape) != 4 or flow.shape[0] != 3:
    raise ValueError(f'expected a flow (3, X0, X1, X2), got shape {tuple(flow.shape)}')
  if mask is not None and tuple(mask.shape) != grid:
    raise ValueError(f'the mask {tuple(mask.shape)} does not match the flow grid {grid}')
  voxel_size = tuple(float(v) for v in voxel_size)
  if len(voxel_size) != 3 or not all(np.isfinite(v) and v > 0 for v in voxel_size):
    raise ValueError(f'the voxel size needs three positive numbers, got {voxel_size}')
  h = gradient.halo(options.window)
  planes = planes or slab_planes(grid, options, budget_bytes)
  planes = min(planes, grid[0])
  fn = _compiled(options)
  h_dev = np.asarray(voxel_size, np.float32)
  out = None
  if sink is None:
    out = {k: np.empty(s, np.float32) for k, s in field_shapes(options, grid).items()}

    def sink(start, stop, fields):  # pylint: disable=function-redefined
      for k, v in fields.items():
        out[k][..., start:stop, :, :] = v
  u_buf = np.zeros((3, planes + 2 * h) + grid[1:], np.float32)
  m_buf = np.zeros((planes + 2 * h,) + grid[1:], bool)
  log.info('strain: %s grid, %d planes per slab, halo %d, window %d', grid, planes, h, options.window)
  for start in range(0, grid[0], planes):
    stop = min(start + planes, grid[0])
    lo, hi = max(start - h, 0), min(stop + h, grid[0])
    u_buf[:] = 0
    m_buf[:] = False
    at = lo - (start - h)
    u_buf[:, at:at + hi - lo] = np.asarray(flow[:, lo:hi], np.float32)
    m_buf[at:at + hi - lo] = True if mask is None else masks.inside(mask[lo:hi])
    fields = jax.device_get(fn(u_buf, m_buf, h_dev))
    sink(start, stop, {k: v[..., :stop - start, :, :] for k, v in fields.items()})
  return out
