"""Post-processing hooks of the inference pipeline (Estimate -> Estimate, see pipeline.py): refinement, strain."""

from __future__ import annotations

import logging
import os

import numpy as np

from raftdvc_jax.data import io
from raftdvc_jax.data import pairs as pairs_lib

log = logging.getLogger(__name__)


class RefineHook:
  """Sub-voxel refinement of the estimated flow (raftdvc_jax.refine), and its per-node record beside it."""

  def __init__(self, overwrite: bool = False, **kwargs):
    self.overwrite, self.kwargs = overwrite, kwargs

  def outputs(self, flow_path):
    from raftdvc_jax.refine import api  # pylint: disable=import-outside-toplevel
    return [api.nodes_path(flow_path)]

  def __call__(self, est):
    from raftdvc_jax.refine import api  # pylint: disable=import-outside-toplevel
    result = api.refine(np.asarray(est.vol0), np.asarray(est.vol1), est.flow, **self.kwargs)
    if est.output is not None:
      log.info('per-node record: %s', api.write_nodes(result.nodes, est.output, overwrite=self.overwrite))
    return est._replace(flow=result.flow)


class StrainHook:
  """Strain and exports of the flow into FLOW_strain/ (raftdvc_jax.analysis); bad settings fail at once."""

  def __init__(self, voxel_size: str, unit: str, formats: str, figures: bool, overwrite: bool, provenance):
    from raftdvc_jax import analysis  # pylint: disable=import-outside-toplevel
    self.voxel_size = analysis.parse_voxel_size(voxel_size)
    self.formats = analysis.parse_formats(formats)
    self.unit, self.figures, self.overwrite, self.provenance = unit, figures, overwrite, dict(provenance)

  def outputs(self, flow_path):
    return [os.path.splitext(flow_path)[0] + '_strain']

  def __call__(self, est):
    from raftdvc_jax import analysis  # pylint: disable=import-outside-toplevel
    if est.output is not None:
      (directory,) = self.outputs(est.output)
      analysis.analyze(est.flow, directory, voxel_size=self.voxel_size, unit=self.unit, formats=self.formats,
                       mask=est.mask, figures_on=self.figures, overwrite=self.overwrite,
                       model=self.provenance.get('checkpoint'), provenance=self.provenance)
      log.info('strain: %s', directory)
    return est


def run_without_network(pairs, paths, hooks, say=log.info) -> None:
  """Each pair through `hooks` from no flow at all (a RefineHook then starts from its integer search)."""
  from raftdvc_jax.infer.pipeline import Estimate  # pylint: disable=import-outside-toplevel
  for pair, path in zip(pairs, paths):
    arrays = pairs_lib.read_pair(pair, mmap=True)
    est = Estimate(pair.name, arrays['vol0'], arrays['vol1'], arrays.get('mask'), None, path, {})
    for hook in hooks:
      est = hook(est)
    io.write_flow(path, est.flow)
    say(f'{path}: written')
