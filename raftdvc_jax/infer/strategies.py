"""Named speed/accuracy presets for tiled inference (--strategy fast|balanced|accurate).

Cost grows with the iterations (linearly) and with the overlap (the tile count grows as (1 / (1 - overlap))^3:
x1 at 0, x2.4 at 0.25, x8 at 0.5), and coarse-to-fine adds a coarse pass (cheap: a stride-8 arm on the same
tiles costs ~1/7 of a stride-4 one, its feature grid having 1/8 of the voxels). What each buys:

  fast      8 iterations, overlap 0.25, cosine blend, no coarse pass. ~1/5 of balanced's time. For previews
            and small, smooth displacements; tile seams may show where the flow varies quickly.
  balanced  12 iterations (what the released arms were trained with), overlap 0.5 (every voxel is
            estimated in the central half of some tile), Gaussian blend, no coarse pass. The default.
  accurate  24 iterations (the original RAFT-DVC inference script's default), overlap 0.5, Gaussian blend,
            coarse-to-fine: a coarse arm first (it reaches larger displacements), whose flow starts the fine
            arm so that the fine arm only refines within its reach. ~2.3x balanced's time.

These presets follow the RAFT literature's practice, not a sweep with trained weights; explicit --iters,
--overlap, --blend and --coarse_checkpoint override them.
"""

from __future__ import annotations

import dataclasses

from raftdvc_jax.infer import tiling


@dataclasses.dataclass(frozen=True)
class Strategy:
  """One preset: refinement iterations, tile overlap, blend, and whether to run a coarse arm first."""

  name: str
  iters: int
  overlap: float
  blend: str
  coarse_to_fine: bool
  description: str


STRATEGIES = {
    'fast': Strategy('fast', 8, 0.25, 'cosine', False,
                     'fewest iterations and tiles: previews and small smooth displacements'),
    'balanced': Strategy('balanced', 12, 0.5, 'gaussian', False,
                         'the trained iteration count, every voxel in the central half of a tile'),
    'accurate': Strategy('accurate', 24, 0.5, 'gaussian', True,
                         'twice the iterations and a coarse arm first for large displacements'),
}
DEFAULT = 'balanced'


def get(name: str) -> Strategy:
  """The named strategy (fast, balanced, accurate)."""
  if name not in STRATEGIES:
    raise ValueError(f'strategy {name!r} is not one of {", ".join(STRATEGIES)}')
  return STRATEGIES[name]


def resolve(name: str = DEFAULT, iters: int | None = None, overlap: float | None = None,
            blend: str | None = None, coarse_to_fine: bool | None = None) -> Strategy:
  """The named strategy with any explicitly given setting taking precedence."""
  s = get(name)
  changes = {k: v for k, v in dict(iters=iters, overlap=overlap, blend=blend, coarse_to_fine=coarse_to_fine).items()
             if v is not None}
  s = dataclasses.replace(s, **changes)
  if s.iters < 1:
    raise ValueError(f'iters must be >= 1, got {s.iters}')
  tiling.check_overlap(s.overlap)
  if s.blend not in tiling.BLENDS:
    raise ValueError(f'blend {s.blend!r} is not one of {", ".join(tiling.BLENDS)}')
  return s
