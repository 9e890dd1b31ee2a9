"""Synthetic bead volume pairs with a known displacement field (numpy/scipy only).

A sample is built in the frame of the output grid (integer coordinates 0..S-1 on each array axis):

1. Draw a displacement field u(x) of one family and scale it so that max_i max_x |u_i(x)| over the grid equals
   a target drawn from [disp_min, disp_max].
2. Place beads by random sequential adsorption (minimum centre distance 1.3 r) in a box larger than the grid,
   wide enough that every bead which can show in either volume exists: nothing enters or leaves at the border.
3. Render hard-sphere beads with a soft edge at p (I1) and at p + u(p) (I2), composite by max, blur with a
   Gaussian PSF, keep the grid, add Poisson + Gaussian read noise independently per volume.

So the flow is the forward displacement reference -> deformed, I2(x + u(x)) ~ I1(x), channel c along array
axis c (RAFT-DVC's convention).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy import spatial

FAMILIES = ('translation', 'rotation', 'affine', 'quadratic', 'smooth', 'mixed')
# The per-sample family mix RAFT-DVC trained its arms with (Phase1SampleGenerator type_probs).
RAFTDVC_MIX = 'translation:0.1,affine:0.45,quadratic:0.45'
GENERATOR_VERSION = 1


def parse_deformation(spec: str) -> dict[str, float]:
  """Parses 'affine' or 'translation:0.1,affine:0.45,...' into {family: probability}."""
  weights = {}
  for part in str(spec).split(','):
    name, _, weight = part.strip().partition(':')
    if name not in FAMILIES:
      raise ValueError(f'deformation {name!r} is not one of {", ".join(FAMILIES)}')
    try:
      w = float(weight) if weight else 1.0
    except ValueError:
      raise ValueError(f'deformation weight {weight!r} of {name!r} is not a number') from None
    if not (w >= 0 and math.isfinite(w)):
      raise ValueError(f'deformation weight of {name!r} must be >= 0, got {weight}')
    weights[name] = weights.get(name, 0.0) + w
  total = sum(weights.values())
  if total <= 0:
    raise ValueError(f'deformation {spec!r} has no positive weight')
  return {k: v / total for k, v in weights.items()}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """What a synthetic pair looks like; plain data that round-trips through JSON."""

  size: int | tuple[int, int, int] = 32
  particle_radius: float = 2.0
  density: float = 4.8  # beads per 1000 voxels
  disp_min: float = 2.0
  disp_max: float = 4.0
  # A family name, or a weighted choice drawn per sample such as RAFTDVC_MIX.
  deformation: str = 'mixed'
  noise: bool = True
  psf_sigma: float = 0.8
  edge_softness: float = 0.5
  min_distance_factor: float = 1.3
  radius_jitter: float = 0.2
  intensity_sigma: float = 0.1
  noise_gain: float = 500.0
  read_noise: float = 0.01
  # Control-point spacing of the 'smooth' B-spline field; 0 means half the largest side.
  smooth_spacing: float = 0.0

  def __post_init__(self):
    if isinstance(self.size, (list, tuple)):
      object.__setattr__(self, 'size', tuple(int(s) for s in self.size))
    checks = [
        (all(s >= 2 for s in self.shape) and len(self.shape) == 3, f'size must be >= 2 per axis, got {self.size}'),
        (self.particle_radius > 0, f'particle_radius must be > 0, got {self.particle_radius}'),
        (self.density >= 0, f'density must be >= 0, got {self.density}'),
        (0 <= self.disp_min <= self.disp_max, f'need 0 <= disp_min <= disp_max, got {self.disp_min}, {self.disp_max}'),
        (self.psf_sigma >= 0, f'psf_sigma must be >= 0, got {self.psf_sigma}'),
        (self.edge_softness >= 0, f'edge_softness must be >= 0, got {self.edge_softness}'),
        (self.min_distance_factor >= 0, f'min_distance_factor must be >= 0, got {self.min_distance_factor}'),
        (0 <= self.radius_jitter < self.particle_radius,
         f'radius_jitter must be in [0, particle_radius), got {self.radius_jitter}'),
        (self.intensity_sigma >= 0, f'intensity_sigma must be >= 0, got {self.intensity_sigma}'),
        (self.noise_gain > 0, f'noise_gain must be > 0, got {self.noise_gain}'),
        (self.read_noise >= 0, f'read_noise must be >= 0, got {self.read_noise}'),
        (self.smooth_spacing >= 0, f'smooth_spacing must be >= 0, got {self.smooth_spacing}'),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)
    parse_deformation(self.deformation)

  @property
  def shape(self) -> tuple[int, int, int]:
    """The output grid (X0, X1, X2)."""
    return self.size if isinstance(self.size, tuple) else (int(self.size),) * 3

  def replace(self, **changes) -> SyntheticConfig:
    """A copy with some fields changed."""
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict."""
    d = dataclasses.asdict(self)
    d['size'] = list(self.size) if isinstance(self.size, tuple) else self.size
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> SyntheticConfig:
    """The inverse of to_dict; unknown keys are an error."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f'unknown synthetic config keys: {sorted(unknown)}')
    return cls(**d)


# The RAFT-DVC arms: ~157 beads in every output volume and a 16^3 feature grid at strides 2 / 4 / 8.
PRESETS = {
    'r2_32': SyntheticConfig(size=32, particle_radius=2.0, density=4.8, disp_min=2.0, disp_max=4.0,
                             deformation=RAFTDVC_MIX),
    'r4_64': SyntheticConfig(size=64, particle_radius=4.0, density=0.6, disp_min=4.0, disp_max=8.0,
                             deformation=RAFTDVC_MIX),
    'r8_128': SyntheticConfig(size=128, particle_radius=8.0, density=0.075, disp_min=8.0, disp_max=16.0,
                              deformation=RAFTDVC_MIX),
}


def preset(name: str, **changes) -> SyntheticConfig:
  """A preset config ('r2_32', 'r4_64', 'r8_128'), optionally with fields changed."""
  if name not in PRESETS:
    raise ValueError(f'unknown preset {name!r}; choose from {", ".join(PRESETS)}')
  return PRESETS[name].replace(**changes)


# ---------------------------------------------------------------------------------------------------------
# Displacement fields. Each is a smooth function of continuous grid coordinates, evaluated separably on a
# lattice (for the flow) or at scattered points (for bead centres), so both agree exactly.


def _monomials(d0, d1, d2):
  """The 10 quadratic monomials [1, d0, d1, d2, d0^2, d1^2, d2^2, d0d1, d0d2, d1d2]."""
  return [1.0, d0, d1, d2, d0 * d0, d1 * d1, d2 * d2, d0 * d1, d0 * d2, d1 * d2]


@dataclasses.dataclass(frozen=True)
class PolynomialField:
  """u_c(x) = sum_k coef[c, k] m_k((x - center) / scale), m = 1, linear and quadratic monomials."""

  coef: np.ndarray  # (3, 10)
  center: np.ndarray  # (3,)
  scale: np.ndarray  # (3,)

  def on_axes(self, axes: Sequence[np.ndarray]) -> np.ndarray:
    """The field on the lattice axes[0] x axes[1] x axes[2], shape (3, n0, n1, n2)."""
    d0, d1, d2 = ((np.asarray(a, np.float64) - self.center[i]) / self.scale[i] for i, a in enumerate(axes))
    d0, d1 = d0[:, None], d1[None, :]
    a = self.coef
    out = np.empty((3, len(d0), d1.shape[1], len(d2)))
    for c in range(3):
      # As a polynomial in d2 with 2-D coefficients, so only a few operations touch the whole 3-D lattice.
      p0 = a[c, 0] + a[c, 1] * d0 + a[c, 2] * d1 + a[c, 4] * d0 * d0 + a[c, 5] * d1 * d1 + a[c, 7] * d0 * d1
      p1 = a[c, 3] + a[c, 8] * d0 + a[c, 9] * d1
      out[c] = p0[:, :, None] + (p1[:, :, None] + a[c, 6] * d2) * d2
    return out

  def at(self, points: np.ndarray) -> np.ndarray:
    """The field at points (N, 3), shape (N, 3)."""
    d = (np.asarray(points, np.float64) - self.center) / self.scale
    m = np.stack(np.broadcast_arrays(*_monomials(d[:, 0], d[:, 1], d[:, 2])), axis=1)
    return m @ self.coef.T

  def scaled(self, factor: float) -> PolynomialField:
    """The field times factor."""
    return dataclasses.replace(self, coef=self.coef * factor)

  def describe(self) -> dict[str, Any]:
    """JSON-ready parameters for the metadata."""
    return {'kind': 'polynomial', 'center': self.center.tolist(), 'scale': self.scale.tolist(),
            'monomials': ['1', 'd0', 'd1', 'd2', 'd0^2', 'd1^2', 'd2^2', 'd0*d1', 'd0*d2', 'd1*d2'],
            'coef': self.coef.tolist()}


def _bspline3(t: np.ndarray) -> np.ndarray:
  """The cubic B-spline kernel."""
  t = np.abs(t)
  return np.where(t < 1, 2 / 3 - t * t + 0.5 * t ** 3, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


@dataclasses.dataclass(frozen=True)
class BSplineField:
  """u_c(x) = sum_ijk coef[c, i, j, k] B((x0 - o0)/h - i) B((x1 - o1)/h - j) B((x2 - o2)/h - k)."""

  coef: np.ndarray  # (3, n0, n1, n2)
  origin: np.ndarray  # (3,) position of control point 0
  spacing: float

  def _basis(self, i: int, x: np.ndarray) -> np.ndarray:
    t = (np.asarray(x, np.float64)[:, None] - self.origin[i]) / self.spacing
    return _bspline3(t - np.arange(self.coef.shape[1 + i]))

  def on_axes(self, axes: Sequence[np.ndarray]) -> np.ndarray:
    """The field on the lattice axes[0] x axes[1] x axes[2], shape (3, n0, n1, n2)."""
    w0, w1, w2 = (self._basis(i, a) for i, a in enumerate(axes))
    # Plain einsum, not tensordot: these products are small, and a multi-threaded BLAS only contends with
    # the loader threads this runs in.
    out = np.einsum('cijk,dk->cijd', self.coef, w2)
    out = np.einsum('cijd,bj->cibd', out, w1)
    return np.einsum('cibd,ai->cabd', out, w0)

  def at(self, points: np.ndarray) -> np.ndarray:
    """The field at points (N, 3), shape (N, 3)."""
    p = np.asarray(points, np.float64)
    w0, w1, w2 = (self._basis(i, p[:, i]) for i in range(3))
    out = np.einsum('pi,cijk->pcjk', w0, self.coef)
    out = np.einsum('pcjk,pj->pck', out, w1)
    return np.einsum('pck,pk->pc', out, w2)

  def scaled(self, factor: float) -> BSplineField:
    """The field times factor."""
    return dataclasses.replace(self, coef=self.coef * factor)

  def describe(self) -> dict[str, Any]:
    """JSON-ready parameters for the metadata."""
    return {'kind': 'bspline', 'origin': self.origin.tolist(), 'spacing': self.spacing,
            'control_shape': list(self.coef.shape[1:])}


@dataclasses.dataclass(frozen=True)
class SumField:
  """A sum of fields (the 'mixed' family)."""

  terms: tuple

  def on_axes(self, axes):
    """The field on the lattice axes[0] x axes[1] x axes[2], shape (3, n0, n1, n2)."""
    return sum(t.on_axes(axes) for t in self.terms)

  def at(self, points):
    """The field at points (N, 3), shape (N, 3)."""
    return sum(t.at(points) for t in self.terms)

  def scaled(self, factor):
    """The field times factor."""
    return SumField(tuple(t.scaled(factor) for t in self.terms))

  def describe(self):
    """JSON-ready parameters for the metadata."""
    return {'kind': 'sum', 'terms': [t.describe() for t in self.terms]}


@dataclasses.dataclass(frozen=True)
class ClampedField:
  """A field held constant beyond the box [lo, hi]: u(x) = inner(clip(x, lo, hi)).

  Polynomials grow without bound (and fold over) away from the grid; holding the field at the edge of the
  region that can show keeps the displacement of every bead that matters bounded, and leaves the grid exact.
  """

  inner: Any
  lo: np.ndarray
  hi: np.ndarray

  def on_axes(self, axes):
    """The field on the lattice axes[0] x axes[1] x axes[2], shape (3, n0, n1, n2)."""
    return self.inner.on_axes([np.clip(a, l, h) for a, l, h in zip(axes, self.lo, self.hi)])

  def at(self, points):
    """The field at points (N, 3), shape (N, 3)."""
    return self.inner.at(np.clip(points, self.lo, self.hi))

  def scaled(self, factor):
    """The field times factor."""
    return dataclasses.replace(self, inner=self.inner.scaled(factor))

  def describe(self):
    """JSON-ready parameters for the metadata."""
    return dict(self.inner.describe(), clamp=[self.lo.tolist(), self.hi.tolist()])


def _grid_axes(shape):
  return [np.arange(n, dtype=np.float64) for n in shape]


def _polynomial(coef, shape) -> PolynomialField:
  center = (np.asarray(shape, np.float64) - 1) / 2
  # Normalised coordinates in [-1, 1] keep the terms of comparable size whatever the grid.
  return PolynomialField(np.asarray(coef, np.float64), center, np.maximum(center, 0.5))


def _rotation(rng, shape, target):
  """A rigid rotation about a random axis through the centre whose max |u_i| over the grid is target."""
  axis = rng.normal(size=3)
  axis /= np.linalg.norm(axis)
  k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
  field0 = _polynomial(np.zeros((3, 10)), shape)

  def field(theta):
    r_minus_i = math.sin(theta) * k + (1 - math.cos(theta)) * (k @ k)
    coef = np.zeros((3, 10))
    coef[:, 1:4] = r_minus_i * field0.scale[None, :]
    return dataclasses.replace(field0, coef=coef)

  # u is linear in x, so its extremes over the grid lie on the 8 corners.
  corners = [np.array([0.0, n - 1.0]) for n in shape]
  excess = lambda theta: float(np.abs(field(theta).on_axes(corners)).max()) - target
  if target == 0:
    return field(0.0), {'axis': axis.tolist(), 'angle_deg': 0.0}
  if excess(math.pi) < 0:
    raise ValueError(f'no rotation of a {shape} grid reaches max |u_i| = {target}')
  lo, hi = 0.0, math.pi
  for _ in range(60):  # bisection on the sign change: 60 halvings of pi reach double precision
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
  theta = 0.5 * (lo + hi)
  return field(theta), {'axis': axis.tolist(), 'angle_deg': math.degrees(theta)}


def _bspline(rng, shape, spacing, reach) -> BSplineField:
  """A random cubic B-spline field whose control lattice covers the grid widened by reach."""
  spacing = spacing or max(shape) / 2
  center = (np.asarray(shape, np.float64) - 1) / 2
  # Control points at center + spacing * j, |j| <= half; two more on each side for the cubic's support.
  half = [int(math.ceil(((n - 1) / 2 + reach) / spacing)) + 2 for n in shape]
  origin = center - np.asarray(half, np.float64) * spacing
  coef = rng.normal(size=(3,) + tuple(2 * h + 1 for h in half))
  return BSplineField(coef, origin, float(spacing))


def draw_field(rng: np.random.Generator, family: str, shape: Sequence[int], target: float,
               smooth_spacing: float = 0.0, reach: float = 0.0):
  """A field of one family scaled so that max |u_i| over a grid of `shape` equals target.

  Returns (field, grid, info): the field, its values on the grid (3, X0, X1, X2) float64, and family-specific
  parameters for the metadata. reach: how far beyond the grid the field must be defined (B-spline support).
  """
  shape = tuple(int(n) for n in shape)
  axes = _grid_axes(shape)
  info = {}
  if family == 'rotation':
    field, info = _rotation(rng, shape, target)
    return field, field.on_axes(axes), info
  if family in ('translation', 'affine', 'quadratic'):
    coef = np.zeros((3, 10))
    used = {'translation': 1, 'affine': 4, 'quadratic': 10}[family]
    coef[:, :used] = rng.normal(size=(3, used))
    field = _polynomial(coef, shape)
    grid = field.on_axes(axes)
  elif family == 'smooth':
    field = _bspline(rng, shape, smooth_spacing, reach)
    grid = field.on_axes(axes)
  elif family == 'mixed':
    # A random convex blend of an affine, a quadratic and a smooth part, each first brought to unit size.
    parts = [draw_field(rng, f, shape, 1.0, smooth_spacing, reach) for f in ('affine', 'quadratic', 'smooth')]
    weights = rng.dirichlet(np.ones(len(parts)))
    field = SumField(tuple(f.scaled(w) for (f, _, _), w in zip(parts, weights)))
    grid = sum(g * w for (_, g, _), w in zip(parts, weights))
    info['weights'] = {'affine': weights[0], 'quadratic': weights[1], 'smooth': weights[2]}
  else:
    raise ValueError(f'deformation {family!r} is not one of {", ".join(FAMILIES)}')
  peak = float(np.abs(grid).max())
  factor = target / peak if peak > 0 else 0.0  # peak == 0 has probability zero; keep the field finite
  grid *= factor
  return field.scaled(factor), grid, info


# ---------------------------------------------------------------------------------------------------------
# Beads.


def place_beads(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, count: int, min_distance: float,
                max_rounds: int = 20) -> np.ndarray:
  """Random sequential adsorption of up to `count` points in the box [lo, hi), pairwise >= min_distance apart.

  Candidates come in batches; a candidate is kept when it is far enough from every bead kept before it, which is
  exactly the sequential rule, resolved with a k-d tree instead of a Python loop over beads.
  """
  lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
  beads = np.zeros((0, 3))
  for _ in range(max_rounds):
    need = count - len(beads)
    if need <= 0:
      break
    cand = rng.uniform(lo, hi, size=(need + need // 4 + 8, 3))
    if min_distance > 0:
      if len(beads):
        dist, _ = spatial.cKDTree(beads).query(cand, distance_upper_bound=min_distance)
        cand = cand[~(dist < min_distance)]
      pairs = spatial.cKDTree(cand).query_pairs(min_distance, output_type='ndarray')
      keep = np.ones(len(cand), bool)
      # Pairs (i < j) in order of i: by the time i is seen, its own fate is settled.
      for i, j in pairs[np.argsort(pairs[:, 0], kind='stable')].tolist():
        if keep[i]:
          keep[j] = False
      cand = cand[keep]
    beads = np.concatenate([beads, cand[:need]])
  return beads


def render_beads(centers: np.ndarray, radii: np.ndarray, intensities: np.ndarray, shape: Sequence[int],
                 edge_softness: float = 0.5) -> np.ndarray:
  """Hard spheres with a linear edge of width 2*edge_softness, composited by max, on a grid of `shape`.

  centers are (N, 3) in index coordinates of the grid; values are intensity * clip((r + s - dist) / 2s, 0, 1).
  Vectorised over beads: each bead owns a small cube around its centre, of which only the voxels inside its
  outer radius and inside the grid are computed; np.maximum.at composites overlapping beads.
  """
  shape = tuple(int(n) for n in shape)
  out = np.zeros(int(np.prod(shape)), np.float32)
  if len(centers) == 0:
    return out.reshape(shape)
  centers = np.asarray(centers, np.float64)
  radii = np.asarray(radii, np.float32)
  half = int(math.ceil(float(np.max(radii)) + edge_softness))
  idx = np.floor(centers).astype(np.int64)[:, :, None] + np.arange(-half, half + 2)  # (N, 3, K)
  delta2 = ((idx - centers[:, :, None]) ** 2).astype(np.float32)
  # Voxels outside the grid get an infinite distance, so one comparison drops them too.
  delta2[(idx < 0) | (idx >= np.asarray(shape)[None, :, None])] = np.inf
  d2 = delta2[:, 0, :, None, None] + delta2[:, 1, None, :, None] + delta2[:, 2, None, None, :]
  outer = radii + edge_softness
  n, i, j, k = np.nonzero(d2 < (outer * outer)[:, None, None, None])
  dist = np.sqrt(d2[n, i, j, k])
  if edge_softness > 0:
    alpha = np.minimum((outer[n] - dist) / (2 * edge_softness), 1)
  else:
    alpha = np.ones_like(dist)
  value = alpha * np.asarray(intensities, np.float32)[n]
  flat = (idx[n, 0, i] * shape[1] + idx[n, 1, j]) * shape[2] + idx[n, 2, k]
  np.maximum.at(out, flat, value)
  return out.reshape(shape)


def add_noise(rng: np.random.Generator, volume: np.ndarray, gain: float = 500.0, read_noise: float = 0.01):
  """Poisson shot noise at `gain` photons per unit intensity plus Gaussian read noise, clipped at 0."""
  lam = np.clip(volume, 0, None).astype(np.float64) * gain
  lit = lam > 0  # Poisson(0) is 0: skip the empty background, most of a bead volume
  noisy = np.zeros(volume.shape, np.float32)
  noisy[lit] = rng.poisson(lam[lit]) / gain
  noisy += read_noise * rng.standard_normal(volume.shape, dtype=np.float32)
  return np.maximum(noisy, 0, out=noisy)


# ---------------------------------------------------------------------------------------------------------
# Pairs.


def _seed_sequence(seed) -> np.random.SeedSequence:
  entropy = [seed] if np.isscalar(seed) else list(seed)
  if not entropy or any(not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0 for s in entropy):
    raise ValueError(f'seed must be a non-negative int or a sequence of them, got {seed!r}')
  return np.random.SeedSequence([int(s) for s in entropy])


def _max_abs_over_box(field, lo, hi, step=2.0) -> float:
  """max |u_i| over the box [lo, hi], taken on a lattice of spacing <= step."""
  axes = [np.linspace(l, h, int(math.ceil((h - l) / step)) + 1) for l, h in zip(lo, hi)]
  return float(np.abs(field.on_axes(axes)).max())


def make_pair(config: SyntheticConfig, seed: int | Sequence[int]) -> dict[str, Any]:
  """One synthetic pair: {'I1', 'I2': float32 (X0, X1, X2), 'flow': float32 (3, X0, X1, X2), 'metadata': dict}."""
  shape = config.shape
  family_rng, field_rng, bead_rng, noise1_rng, noise2_rng = (
      np.random.default_rng(s) for s in _seed_sequence(seed).spawn(5))

  mix = parse_deformation(config.deformation)
  names = sorted(mix)
  family = names[int(family_rng.choice(len(names), p=[mix[n] for n in names]))] if len(names) > 1 else names[0]
  target = float(family_rng.uniform(config.disp_min, config.disp_max))

  # The PSF reaches `margin` voxels: render a window that much wider than the grid so the crop is exact.
  # A bead shows in the window when its centre is within `reach` of it: the region `seen`.
  margin = int(4.0 * config.psf_sigma + 0.5) if config.psf_sigma > 0 else 0
  r_max = config.particle_radius + config.radius_jitter
  reach = r_max + config.edge_softness + 1
  seen_lo = np.full(3, -margin - reach)
  seen_hi = np.asarray(shape, np.float64) - 1 + margin + reach
  field, flow, info = draw_field(field_rng, family, shape, target, config.smooth_spacing, reach=margin + reach)
  flow = flow.astype(np.float32)
  field = ClampedField(field, seen_lo, seen_hi)

  # A bead shows in I2 when p + u(p) is seen; |u| <= u_seen everywhere, so p lies within u_seen of `seen`
  # (+2 for the coarse lattice the maximum was taken on). Placing beads in that whole box, at the given
  # density, means every bead that moves into view exists, and none is cut off by the generation box.
  u_seen = _max_abs_over_box(field, seen_lo, seen_hi) + 2
  lo, hi = seen_lo - u_seen, seen_hi + u_seen
  requested = int(round(config.density * float(np.prod(hi - lo)) / 1000))
  p = place_beads(bead_rng, lo, hi, requested, config.min_distance_factor * config.particle_radius)
  num_placed = int(len(p))
  r_min = min(max(0.5, config.particle_radius - config.radius_jitter), r_max)
  radii = bead_rng.uniform(r_min, r_max, size=len(p))
  intensity = np.clip(bead_rng.normal(1.0, config.intensity_sigma, size=len(p)), 0.5, 1.5)
  moved = p + field.at(p)
  is_seen = lambda q: np.all((q >= seen_lo) & (q <= seen_hi), axis=1)
  shown = is_seen(p) | is_seen(moved)
  p, moved, radii, intensity = p[shown], moved[shown], radii[shown], intensity[shown]

  window = tuple(n + 2 * margin for n in shape)
  crop = tuple(slice(margin, margin + n) for n in shape)
  volumes = []
  for centers, noise_rng in ((p, noise1_rng), (moved, noise2_rng)):
    vol = render_beads(centers + margin, radii, intensity, window, config.edge_softness)
    if config.psf_sigma > 0:
      vol = ndimage.gaussian_filter(vol, config.psf_sigma, truncate=4.0)
    vol = np.ascontiguousarray(vol[crop], np.float32)
    if config.noise:
      vol = add_noise(noise_rng, vol, config.noise_gain, config.read_noise)
    volumes.append(vol)

  seed_json = int(seed) if np.isscalar(seed) else [int(s) for s in seed]
  metadata = {
      'generator': 'raftdvc_jax.data.synthetic', 'version': GENERATOR_VERSION, 'seed': seed_json,
      'config': config.to_dict(), 'deformation': family, 'target_max_disp': target,
      'max_abs_disp': float(np.abs(flow).max()), 'num_beads_rendered': int(len(p)),
      'num_beads_placed': num_placed, 'num_beads_requested': requested,
      'placement_box': [lo.tolist(), hi.tolist()], 'field': field.describe(),
      'convention': 'flow[c] = displacement along array axis c, reference -> deformed: I2(x + u(x)) ~ I1(x)',
  }
  metadata.update({k: _jsonable(v) for k, v in info.items()})
  return {'I1': volumes[0], 'I2': volumes[1], 'flow': flow, 'metadata': metadata}


def _jsonable(v):
  if isinstance(v, dict):
    return {k: _jsonable(x) for k, x in v.items()}
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  return v
