"""Results people use: strain in physical units, ParaView files, figures, and the formats of spam and pyALDVC.

  from raftdvc_jax import analysis
  fields = analysis.compute(flow, voxel_size=(h0, h1, h2))          # dict of numpy arrays, in memory
  analysis.analyze(flow, 'results/', voxel_size=(h0, h1, h2), unit='um', formats=('npz', 'vti'))
  nodes = analysis.read_peer_result('spam-ldic.tsv')                 # or a pyALDVC .npz / .csv
  epe = nodes.endpoint_errors(true_flow)                             # per node, voxels

Conventions: flow (3, X0, X1, X2) in voxels, channel c along array axis c; voxel_size per array axis;
F[i, j] = delta_ij + d(u_i h_i) / d(X_j h_j) with array-axis indices. docs/analysis.md has the details.
Imports only raftdvc_jax.data below it.
"""

from raftdvc_jax.analysis.aldvc import read_aldvc
from raftdvc_jax.analysis.aldvc import write_aldvc_csv
from raftdvc_jax.analysis.aldvc import write_aldvc_npz
from raftdvc_jax.analysis.figures import slice_report
from raftdvc_jax.analysis.metadata import parse_voxel_size
from raftdvc_jax.analysis.nodes import node_axes
from raftdvc_jax.analysis.nodes import NodeField
from raftdvc_jax.analysis.nodes import sample_flow
from raftdvc_jax.analysis.peers import read_peer_result
from raftdvc_jax.analysis.run import analyze
from raftdvc_jax.analysis.run import analyze_file
from raftdvc_jax.analysis.run import FORMATS
from raftdvc_jax.analysis.run import parse_formats
from raftdvc_jax.analysis.spam_tsv import read_spam_tsv
from raftdvc_jax.analysis.spam_tsv import write_spam_tsv
from raftdvc_jax.analysis.strain import compute
from raftdvc_jax.analysis.strain import StrainOptions
from raftdvc_jax.analysis.vti import write_vti
