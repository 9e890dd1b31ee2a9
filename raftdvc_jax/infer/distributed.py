"""Tiled flow estimation split over the processes of a jax.distributed job (one per host or per GPU).

Each process takes a contiguous share of the tile plan (C order, so a share is roughly a slab along array
axis 0), reads only those tiles from the volumes (pass memory-mapped arrays, or anything that slices, and no
process loads the whole pair), runs them on its local devices and blends them into its own accumulators of
w * flow and w. The accumulators are then summed over the processes in blocks of rows (a cross-process
all-gather: Gloo on CPU, NCCL on GPU) and process 0 normalises them. That is the single-process blend,
sum(w f) / sum(w), with the sums taken in another order: the flow equals the one-process flow to float
rounding. Process 0 returns the flow; the others return None. tiled.run_tiled(..., across_processes=True)
does the work; FlowEstimator.tiled and infer.py --distributed use it.

Start the processes with raftdvc_jax.runtime.initialize_distributed(coordinator_address, num_processes,
process_id) (on SLURM, Open MPI or TPU pods with no arguments) before anything else touches JAX;
docs/distributed.md.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from raftdvc_jax.infer import tiled


def run_tiled_distributed(apply_fn: Callable, vol0, vol1, **kwargs) -> tuple[np.ndarray | None, dict]:
  """tiled.run_tiled over this process's share of the tiles, summed over all processes.

  Takes run_tiled's arguments. Returns (flow (3, X0, X1, X2) float32 on process 0 and None elsewhere,
  summary), the summary counting this process's tiles and seconds. Every process must call it with the same
  arguments.
  """
  kwargs.setdefault('progress', False)
  return tiled.run_tiled(apply_fn, vol0, vol1, across_processes=True, return_summary=True, **kwargs)
