"""What a mask means, everywhere in the library: a voxel is inside when its value is >= 0.5.

One rule for inference (which tiles run, where the flow is kept), refinement, strain analysis, training and
evaluation (docs/conventions.md). It reads the masks users have the same way: 0/1 and boolean masks, 0/255
label images, and soft (probability) masks in [0, 1], whose voxels count where they are at least even odds;
NaN is outside.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 0.5


def inside(mask):
  """Boolean array, True where `mask` counts a voxel as inside (value >= 0.5); numpy, memory-mapped or JAX."""
  if isinstance(mask, (np.ndarray, list, tuple)) or np.isscalar(mask):
    mask = np.asarray(mask)
  return mask >= THRESHOLD
