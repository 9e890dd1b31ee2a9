r"""A volume pair larger than the memory the process may use, streamed through tiled inference to disk.

  python tools/bench_stream.py --workdir /tmp/stream --sizes 128,192,256

For each cube side: writes a bead-free random pair (vol1 = vol0 shifted one voxel along axis 2) as .npy files
plane by plane, and a tiny network's checkpoint; then a child process loads it, compiles the tile once on a
small pair, caps its private writable memory with RLIMIT_DATA at VmData + --cap_fraction x one volume's bytes,
and runs the library's pipeline (Pipeline.run_pair: memory-mapped inputs read tile by tile, blend sums
in a memory-mapped temporary file, the flow written to disk from it). As a control it then tries to load
one input whole, which the cap must refuse. RLIMIT_DATA is used because it counts what a process loads (heap,
anonymous memory) but not file mappings, which RLIMIT_AS would count. Prints one row per size: volume MB, cap
MB, seconds, peak RSS (VmHWM, which includes the inputs' clean file pages the kernel may drop) and whether the
control was refused. tests/infer/test_streaming.py runs one size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

TILE = 16
ITERS = 2


def tiny_config():
  """A narrow 1/8 network: the test is about memory, not about the flow."""
  from raftdvc_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  return ModelConfig(encoder_type='1/8', feature_dim=16, hidden_dim=16, context_dim=16, corr_levels=2,
                     corr_radius=2, iters=ITERS)


def make_files(workdir: str, side: int, seed: int = 0) -> dict:
  """Writes vol0.npy, vol1.npy (side^3 float32, plane by plane) and a tiny checkpoint; returns their paths."""
  import jax  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.convert import orbax_io  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.model.raft import init_params  # pylint: disable=import-outside-toplevel
  os.makedirs(workdir, exist_ok=True)
  paths = {k: os.path.join(workdir, f'{k}.npy') for k in ('vol0', 'vol1')}
  rng = np.random.default_rng(seed)
  vols = [np.lib.format.open_memmap(paths[k], 'w+', np.float32, (side,) * 3) for k in ('vol0', 'vol1')]
  for i in range(side):
    plane = rng.random((side, side), dtype=np.float32)
    vols[0][i], vols[1][i] = plane, np.roll(plane, 1, axis=1)
  for v in vols:
    v.flush()
  del vols
  paths['ckpt'] = os.path.join(workdir, 'ckpt')
  if not os.path.exists(paths['ckpt']):
    orbax_io.save(paths['ckpt'], tiny_config(), init_params(tiny_config(), jax.random.key(seed)), {'kind': 'test'})
  paths['flow'] = os.path.join(workdir, 'flow.npy')
  return paths


def pipeline(ckpt: str):
  """The pipeline the child runs: tiles of TILE^3 without overlap, one per call."""
  import raftdvc_jax  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer.pipeline import Pipeline  # pylint: disable=import-outside-toplevel
  return Pipeline(raftdvc_jax.load(ckpt), tile=TILE, overlap=0.0, blend='uniform', batch=1, iters=ITERS)


def _child(workdir: str, cap_fraction: float) -> None:
  import resource  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.data import pairs  # pylint: disable=import-outside-toplevel
  from raftdvc_jax import runtime  # pylint: disable=import-outside-toplevel
  paths = {k: os.path.join(workdir, f'{k}.npy') for k in ('vol0', 'vol1', 'flow')}
  pipe = pipeline(os.path.join(workdir, 'ckpt'))
  warm = np.random.default_rng(1).random((TILE, TILE, 2 * TILE), dtype=np.float32)
  pipe.estimate(warm, warm)  # compiles the tile and starts the reader thread once, before the cap
  volume_bytes = os.path.getsize(paths['vol0'])
  base = runtime.status_bytes('VmData')
  cap = int(cap_fraction * volume_bytes)
  resource.setrlimit(resource.RLIMIT_DATA, (base + cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))
  t0 = time.perf_counter()
  pair = pairs.Pair('big', {k: pairs.Source(paths[k]) for k in ('vol0', 'vol1')})
  result = pipe.run_pair(pair, paths['flow'])
  seconds = time.perf_counter() - t0
  try:
    np.load(paths['vol0'])  # the control: loading one volume whole must exceed the cap
    refused = False
  except MemoryError:
    refused = True
  mb = lambda b: b / 2**20
  print(json.dumps({'side': int(result.flow.shape[1]), 'volume_mb': mb(volume_bytes), 'cap_mb': mb(cap),
                    'seconds': seconds, 'peak_rss_mb': mb(runtime.status_bytes('VmHWM')),
                    'accumulators_memmapped': bool(result.summary['memmap']), 'control_refused': refused}))


def run_capped(workdir: str, cap_fraction: float = 1 / 3, timeout: int = 900) -> dict:
  """Runs the child on the files in workdir; returns its report (raises with its output if it failed)."""
  # MALLOC_ARENA_MAX=1: glibc's per-thread malloc arenas would otherwise claim writable address space that
  # RLIMIT_DATA counts, though little of it is ever touched.
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1',
             MALLOC_ARENA_MAX='1',
             PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  run = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', workdir, str(cap_fraction)],
                       capture_output=True, text=True, env=env, timeout=timeout)
  if run.returncode != 0:
    raise RuntimeError(f'the capped run failed (exit {run.returncode}):\n{run.stderr[-3000:]}')
  return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  from raftdvc_jax import cli  # pylint: disable=import-outside-toplevel
  cli.quiet_logs()
  rows = []
  for side in (int(s) for s in _SIZES.value):
    workdir = os.path.join(_WORKDIR.value, str(side))
    make_files(workdir, side)
    try:
      rows.append(run_capped(workdir, _CAP.value))
    except RuntimeError as e:  # the cap was below the per-tile working set: a row saying so
      rows.append({'side': side, 'volume_mb': side**3 * 4 / 2**20, 'cap_mb': _CAP.value * side**3 * 4 / 2**20,
                   'failed': str(e).strip().splitlines()[-1]})
    for name in ('vol0.npy', 'vol1.npy', 'flow.npy'):
      if os.path.exists(os.path.join(workdir, name)):
        os.remove(os.path.join(workdir, name))
  print('| side | one volume MB | cap MB (above baseline) | seconds | peak RSS MB (VmHWM) '
        '| whole-volume load refused |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    if 'failed' in r:
      print(f'| {r["side"]}^3 | {r["volume_mb"]:.0f} | {r["cap_mb"]:.0f} | failed under the cap: {r["failed"]} | | |')
      continue
    print(f'| {r["side"]}^3 | {r["volume_mb"]:.0f} | {r["cap_mb"]:.0f} | {r["seconds"]:.1f} | {r["peak_rss_mb"]:.0f} '
          f'| {r["control_refused"]} |')


if __name__ == '__main__':
  if len(sys.argv) > 1 and sys.argv[1] == '--child':
    _child(sys.argv[2], float(sys.argv[3]))
  else:
    from absl import flags  # pylint: disable=import-outside-toplevel
    from raftdvc_jax import cli  # pylint: disable=import-outside-toplevel
    _WORKDIR = flags.DEFINE_string('workdir', None, 'Scratch directory for the pairs and flows.', required=True)
    _SIZES = flags.DEFINE_list('sizes', ['192', '256', '320'], 'Cube sides to run.')
    _CAP = flags.DEFINE_float('cap_fraction', 1 / 3, 'The memory cap as a fraction of one volume\'s bytes.')
    cli.start(main)
