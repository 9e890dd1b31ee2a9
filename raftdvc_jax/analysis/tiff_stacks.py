"""Per-component float32 TIFF stacks, one 3-D stack (X0, X1, X2) per component, as MBS-3D-OptFlow and
VolRAFT hand results to Fiji and Avizo.

Displacements are named as MBS names its folders: dx = along array axis 2 (the image width), dy = axis 1,
dz = axis 0, in voxels. Tensor components take spam's (z, y, x) letters for array axes (0, 1, 2).
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import tifffile

from raftdvc_jax.atomic import atomic_path

LETTERS = 'zyx'


def write_stack(path, volume) -> None:
  """One float32 3-D TIFF stack, atomic."""
  with atomic_path(path) as tmp:
    tifffile.imwrite(tmp, np.asarray(volume, np.float32), photometric='minisblack')


def write_stacks(directory, flow, tensors: Mapping[str, np.ndarray], scalars: Mapping[str, np.ndarray]) -> list[str]:
  """dx/dy/dz.tif from the flow (voxels), NAME_ab.tif for the 6 independent components of each symmetric
  tensor, NAME.tif per scalar; returns the paths written."""
  directory = os.fspath(directory)
  paths = []
  for c, name in ((2, 'dx'), (1, 'dy'), (0, 'dz')):
    paths.append(os.path.join(directory, f'{name}.tif'))
    write_stack(paths[-1], flow[c])
  for name, t in tensors.items():
    for i in range(3):
      for j in range(i, 3):
        paths.append(os.path.join(directory, f'{name}_{LETTERS[i]}{LETTERS[j]}.tif'))
        write_stack(paths[-1], t[i, j])
  for name, s in scalars.items():
    paths.append(os.path.join(directory, f'{name}.tif'))
    write_stack(paths[-1], s)
  return paths
