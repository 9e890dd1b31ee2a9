"""The voxel size and the metadata that travel with every analysis result."""

from __future__ import annotations

import datetime
import math
from typing import Any, Mapping

COMPONENT_ORDER = 'array axes (0, 1, 2); in VTK/pyALDVC terms (z, y, x)'
TENSOR_CONVENTION = 'F[i, j] = delta_ij + d(u_i h_i) / d(X_j h_j); i, j = array axes; strains dimensionless'
FLOW_SIGN = 'reference -> deformed: vol1(x + u(x)) ~ vol0(x); u in voxels along each array axis'


def parse_voxel_size(text) -> tuple[float, float, float]:
  """'A,B,C' (one per array axis) or 'A' (isotropic) -> three positive floats; ValueError otherwise."""
  if isinstance(text, (tuple, list)):
    parts = [str(p) for p in text]
  else:
    parts = [p.strip() for p in str(text).split(',')]
  try:
    values = [float(p) for p in parts]
  except ValueError:
    raise ValueError(f'--voxel_size {text!r}: expected numbers A,B,C (one per array axis) or one number') from None
  if len(values) == 1:
    values *= 3
  if len(values) != 3:
    raise ValueError(f'--voxel_size {text!r}: expected 3 values (one per array axis) or 1, got {len(values)}')
  if not all(math.isfinite(v) and v > 0 for v in values):
    raise ValueError(f'--voxel_size {text!r}: every entry must be a positive finite number')
  return tuple(values)


def build(voxel_size, unit: str, options: Mapping[str, Any], model: str | None = None,
          provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The metadata dict stored beside (and inside) every result."""
  from raftdvc_jax.version import __version__  # pylint: disable=import-outside-toplevel
  return {
      'voxel_size': [float(v) for v in voxel_size],
      'voxel_size_order': 'array axes (0, 1, 2)',
      'unit': unit,
      'component_order': COMPONENT_ORDER,
      'tensor_convention': TENSOR_CONVENTION,
      'flow_sign': FLOW_SIGN,
      'model': model,
      'options': dict(options),
      'provenance': dict(provenance or {}),
      'software': f'raftdvc_jax {__version__}',
      'created_utc': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
  }
