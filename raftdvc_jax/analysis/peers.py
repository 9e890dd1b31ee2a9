"""One entry point for a classical peer's result file: spam TSV or pyALDVC npz/csv, as a NodeField."""

from __future__ import annotations

import os

from raftdvc_jax.analysis.aldvc import read_aldvc
from raftdvc_jax.analysis.nodes import NodeField
from raftdvc_jax.analysis.spam_tsv import read_spam_tsv


def read_peer_result(path, voxel_size=(1.0, 1.0, 1.0)) -> NodeField:
  """A spam .tsv or a pyALDVC .npz / .csv, in array order and voxels (voxel_size only matters for .csv)."""
  suffix = os.path.splitext(os.fspath(path))[1].lower()
  if suffix == '.tsv':
    return read_spam_tsv(path)
  if suffix in ('.npz', '.csv'):
    return read_aldvc(path, voxel_size)
  raise ValueError(f'{os.fspath(path)}: unknown peer result {suffix or "without suffix"!r}; '
                   'use a spam .tsv or a pyALDVC .npz / .csv')
