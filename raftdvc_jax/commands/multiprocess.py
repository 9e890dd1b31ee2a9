"""The --distributed flags raftdvc-train and raftdvc-infer share, and joining the jax.distributed job they name."""

from __future__ import annotations

from absl import flags

_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Join a jax.distributed job (one process per host or GPU; '
                                 'SLURM, Open MPI and TPU pods are detected, else give the three flags below).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (with --distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (with --distributed).',
                                      lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index (with --distributed).',
                                   lower_bound=0)


def requested() -> bool:
  """Whether --distributed was given; refuses the job flags without it."""
  if not _DISTRIBUTED.value:
    given = [f'--{f.name}' for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID) if f.value is not None]
    if given:
      raise ValueError(f'{", ".join(given)} only mean something with --distributed')
  return _DISTRIBUTED.value


def start() -> bool:
  """Joins the job the flags describe (Gloo collectives on CPU) before anything else uses JAX; False if none."""
  if not requested():
    return False
  count, index = _NUM_PROCESSES.value, _PROCESS_ID.value
  if count is not None and index is not None and index >= count:
    raise ValueError(f'--process_id {_PROCESS_ID.value} must be below --num_processes {_NUM_PROCESSES.value}')
  from raftdvc_jax import runtime  # pylint: disable=import-outside-toplevel
  runtime.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  return True
