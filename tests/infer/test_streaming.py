"""A volume pair three times larger than the memory the process may use streams through tiled inference.

The child process (tools/bench_stream.py) compiles the tile first, then caps its private writable memory
(RLIMIT_DATA: the heap and anonymous maps, not file maps) at one third of one input volume above what it
already uses, and runs Pipeline.run_pair from memory-mapped .npy files to a flow file on disk.
"""

import numpy as np

import raftdvc_jax
from tests.tool_import import import_tool

bench_stream = import_tool('bench_stream')


def test_a_pair_three_times_the_cap_streams_to_a_flow_on_disk(tmp_path):
  side = 256
  paths = bench_stream.make_files(str(tmp_path), side)
  report = bench_stream.run_capped(str(tmp_path), cap_fraction=1 / 3)
  assert report['cap_mb'] < report['volume_mb'] / 2.9  # one volume is about 3x the cap (the pair 6x)
  assert report['control_refused']  # the cap bites: loading one input whole raises MemoryError
  assert report['accumulators_memmapped']  # the planner saw the cap and put the blend sums on disk
  flow = np.load(paths['flow'], mmap_mode='r')
  assert flow.shape == (3, side, side, side) and flow.dtype == np.float32
  # Tiles do not overlap, so each tile of the file is that tile's own flow: check two against a direct run.
  est = raftdvc_jax.load(paths['ckpt'])
  vol0, vol1 = (np.load(paths[k], mmap_mode='r') for k in ('vol0', 'vol1'))
  t = bench_stream.TILE
  for origin in ((0, 0, 0), (side - t, 3 * t, side - t)):
    box = tuple(slice(o, o + t) for o in origin)
    want = est(np.asarray(vol0[box]), np.asarray(vol1[box]), iters=bench_stream.ITERS)
    np.testing.assert_allclose(flow[(slice(None),) + box], want, atol=1e-5)
  assert float(np.abs(flow[:, :t, :t, :t]).max()) > 1e-3


def test_the_benchmark_has_help():
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  done = subprocess.run([sys.executable, 'tools/bench_stream.py', '--help'], capture_output=True, text=True,
                        check=False, cwd=bench_stream.os.path.dirname(bench_stream.os.path.dirname(
                            bench_stream.os.path.abspath(bench_stream.__file__))))
  assert done.returncode == 0 and '--cap_fraction' in done.stdout + done.stderr
