"""Node grids: the sparse point sets that classical DVC (spam, pyALDVC) reports, and their comparison with a
dense flow.

Everything here is in array-axis order and voxels: positions[n] = (p0, p1, p2), displacement[n] = (u0, u1,
u2). The spam and pyALDVC modules convert to and from their own orders at the file.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass
class NodeField:
  """Displacements at nodes: positions and displacement (N, 3) in array-axis order and voxels, valid (N,),
  and optionally the deformation gradient F (N, 3, 3) in voxel units and the node grid's shape."""
  positions: np.ndarray
  displacement: np.ndarray
  valid: np.ndarray
  F: np.ndarray | None = None  # pylint: disable=invalid-name
  grid_shape: tuple[int, int, int] | None = None
  source: str = ''

  def sample(self, flow, order: int = 1) -> np.ndarray:
    """A dense flow (3, X0, X1, X2) at the node positions, (N, 3), trilinear by default."""
    return sample_flow(flow, self.positions, order)

  def endpoint_errors(self, flow) -> np.ndarray:
    """|u_nodes - flow(positions)| per node, voxels; NaN at invalid nodes and nodes outside the grid."""
    shape = np.asarray(flow.shape[1:])
    inside = np.all((self.positions >= 0) & (self.positions <= shape - 1), axis=1)
    err = np.linalg.norm(self.displacement - self.sample(flow), axis=1)
    return np.where(self.valid & inside, err, np.nan)


def node_axes(grid, spacing) -> list[np.ndarray]:
  """Node indices per array axis: every `spacing` voxels, centred so both ends keep an equal margin."""
  spacing = np.broadcast_to(np.asarray(spacing, int), (3,))
  axes = []
  for n, s in zip(grid, spacing):
    if s < 1:
      raise ValueError(f'the node spacing must be >= 1 voxel, got {s}')
    offset = ((int(n) - 1) % int(s)) // 2
    axes.append(np.arange(offset, int(n), int(s)))
  return axes


def sample_flow(flow, positions, order: int = 1) -> np.ndarray:
  """A flow (3, X0, X1, X2) sampled at positions (N, 3) in voxels; (N, 3) in array order."""
  positions = np.asarray(positions, np.float64)
  if np.allclose(positions, np.round(positions)) and order == 1:  # whole voxels: plain indexing
    idx = np.clip(np.round(positions).astype(np.int64), 0, np.asarray(flow.shape[1:]) - 1)
    return np.stack([np.asarray(flow[c])[idx[:, 0], idx[:, 1], idx[:, 2]] for c in range(3)], axis=1)
  return np.stack([ndimage.map_coordinates(np.asarray(flow[c], np.float64), positions.T, order=order,
                                           mode='nearest') for c in range(3)], axis=1)
