"""Tiled flow estimation split over the processes of a jax.distributed job (one per host or per GPU).

Each process takes a contiguous share of the tile plan (C order, so a share is roughly a slab along array
axis 0), reads only those tiles from the volumes (pass memory-mapped arrays, or anything that slices, and no
process loads the whole pair), runs them on its local devices and blends them into its own accumulators of
w * flow and w. The accumulators are then summed over the processes in blocks of rows (a cross-process
all-gather: Gloo on CPU, NCCL on GPU) and process 0 normalises them. That is the single-process blend,
sum(w f) / sum(w), with the sums taken in another order: the flow equals the one-process flow to float
rounding. Process 0 returns the flow; the others return None. tiled.run_tiled(..., across_processes=True)
does the work; FlowEstimator.tiled and infer.py --distributed use it.

Start the processes with initialize(coordinator_address, num_processes, process_id) (on SLURM, Open MPI or
TPU pods with no arguments) before anything else touches JAX; docs/distributed.md.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from raftdvc_jax.infer import tiled


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """jax.distributed.initialize, with Gloo as the CPU backend's cross-process collectives."""
  # The CPU client only has cross-process collectives when an implementation is chosen before it starts
  # ('gloo' is built into jaxlib; 'mpi' needs an MPI library). GPUs use NCCL regardless.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def run_tiled_distributed(apply_fn: Callable, vol0, vol1, **kwargs) -> tuple[np.ndarray | None, dict]:
  """tiled.run_tiled over this process's share of the tiles, summed over all processes.

  Takes run_tiled's arguments. Returns (flow (3, X0, X1, X2) float32 on process 0 and None elsewhere,
  summary), the summary counting this process's tiles and seconds. Every process must call it with the same
  arguments.
  """
  kwargs.setdefault('progress', False)
  return tiled.run_tiled(apply_fn, vol0, vol1, across_processes=True, return_summary=True, **kwargs)
