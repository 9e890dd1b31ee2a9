"""Sub-voxel refinement: cubic B-spline subsets, IC-GN (first or second order), integer search, dense field.

  from raftdvc_jax import refine
  result = refine.refine(vol0, vol1, flow_init=None)   # result.flow (3, X0, X1, X2), result.nodes
  refine.write_nodes(result.nodes, 'flow.npy')         # -> flow_nodes.npz

Imports only raftdvc_jax.data below it.
"""

from raftdvc_jax.refine.api import BATCH_SIZE
from raftdvc_jax.refine.api import default_axes
from raftdvc_jax.refine.api import MAX_ITER
from raftdvc_jax.refine.api import MIN_ZNCC
from raftdvc_jax.refine.api import NodeResult
from raftdvc_jax.refine.api import nodes_path
from raftdvc_jax.refine.api import ORDER
from raftdvc_jax.refine.api import read_nodes
from raftdvc_jax.refine.api import refine
from raftdvc_jax.refine.api import refine_estimate
from raftdvc_jax.refine.api import Refinement
from raftdvc_jax.refine.api import SEARCH_REACH
from raftdvc_jax.refine.api import STEP
from raftdvc_jax.refine.api import SUBSET
from raftdvc_jax.refine.api import TOL
from raftdvc_jax.refine.api import write_nodes

import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
  """This package, callable: raftdvc_jax.refine(vol0, vol1, ...) is raftdvc_jax.refine.refine(vol0, vol1, ...)."""

  def __call__(self, *args, **kwargs) -> Refinement:
    return refine(*args, **kwargs)


# A package and a function cannot share the name raftdvc_jax.refine; a callable package gives both.
_sys.modules[__name__].__class__ = _CallableModule
