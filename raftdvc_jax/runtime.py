"""What the process runs on: host memory it may use, joining a multi-process job, the compilation cache.

Shared by training and inference (and the benchmarks); nothing here knows about networks.
"""

from __future__ import annotations

import os

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'raftdvc_jax', 'xla')


def _read_int(path: str) -> int | None:
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None  # 'max' (no limit) and unreadable files give None


def status_bytes(field: str) -> int | None:
  """A 'kB' field of /proc/self/status (e.g. VmData) in bytes."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def available_ram_bytes() -> int:
  """Memory this process can still use: the host's MemAvailable, lowered by a cgroup v2 memory.max and an
  RLIMIT_DATA soft limit when they are set (the physical total where nothing is known)."""
  limits = []
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          limits.append(int(line.split()[1]) * 1024)
  except OSError:
    pass
  if not limits:
    try:
      limits.append(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))
    except (ValueError, OSError, AttributeError):
      limits.append(8 << 30)
  cap, used = _read_int('/sys/fs/cgroup/memory.max'), _read_int('/sys/fs/cgroup/memory.current')
  if cap is not None and used is not None:
    limits.append(max(0, cap - used))
  try:
    import resource  # pylint: disable=import-outside-toplevel
    soft = resource.getrlimit(resource.RLIMIT_DATA)[0]
    data = status_bytes('VmData')
    if soft != resource.RLIM_INFINITY and data is not None:
      limits.append(max(0, soft - data))  # RLIMIT_DATA counts private writable memory: VmData
  except (ImportError, OSError, ValueError):
    pass
  return min(limits)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """jax.distributed.initialize, with Gloo as the CPU backend's cross-process collectives."""
  # The CPU client only has cross-process collectives when an implementation is chosen before it starts
  # ('gloo' is built into jaxlib; 'mpi' needs an MPI library). GPUs use NCCL regardless.
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def enable_compilation_cache(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache (so a tile shape compiles once across runs); returns its dir.

  Returns None, leaving the cache off, when the directory cannot be created or written: the cache only saves
  time, so it must never stop a run.
  """
  import jax  # pylint: disable=import-outside-toplevel
  path = path or os.environ.get('RAFTDVC_JAX_CACHE') or DEFAULT_CACHE_DIR
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None
  if not os.access(path, os.W_OK | os.X_OK):
    return None
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  return path
