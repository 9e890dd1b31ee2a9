r"""Writes a synthetic dataset of bead volume pairs with known displacement, in RAFT-DVC's layout.

  python tools/make_dataset.py --output data/r2_32 --split train --num_samples 2000 --preset r2_32 --seed 1

Writes OUTPUT[/SPLIT]/sample_NNNNN.npz with I1, I2 float32 (S, S, S), flow float32 (3, S, S, S) (channel c =
displacement along array axis c, reference -> deformed, I2(x + u(x)) ~ I1(x)) and metadata (a JSON string;
np.load(..., allow_pickle=False) reads it). Sample i of a split is SyntheticDataset(config, seed=(SEED,
crc32(SPLIT)))[i], so the same arguments give byte-identical files and training on the fly sees the same data.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib

from absl import app
from absl import flags

try:
  import raftdvc_jax  # pylint: disable=unused-import
except ImportError:  # run from a checkout without `pip install -e .`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raftdvc_jax.data import datasets  # pylint: disable=g-import-not-at-top
from raftdvc_jax.data import io  # pylint: disable=g-import-not-at-top
from raftdvc_jax.data import synthetic  # pylint: disable=g-import-not-at-top

_OUTPUT = flags.DEFINE_string('output', None, 'Dataset directory (created if absent).', required=True)
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', None, 'Number of samples to write.', lower_bound=1,
                                    required=True)
_PRESET = flags.DEFINE_enum('preset', None, list(synthetic.PRESETS),
                            'Start from a RAFT-DVC arm preset (size, radius, density, displacement band and the '
                            'RAFT-DVC family mix); flags given explicitly override it.')
_SIZE = flags.DEFINE_integer('size', 32, 'Edge S of the cubic volumes, voxels.', lower_bound=2)
_RADIUS = flags.DEFINE_float('particle_radius', 2.0, 'Bead radius, voxels.')
_DENSITY = flags.DEFINE_float('density', 4.8, 'Beads per 1000 voxels.')
_DISP_MIN = flags.DEFINE_float('disp_min', 2.0, 'Lower end of the band max |u_i| is drawn from, voxels.')
_DISP_MAX = flags.DEFINE_float('disp_max', 4.0, 'Upper end of the band max |u_i| is drawn from, voxels.')
_DEFORMATION = flags.DEFINE_string(
    'deformation', 'mixed',
    f'One of {{{",".join(synthetic.FAMILIES)}}}, or a per-sample weighted choice such as '
    f'"{synthetic.RAFTDVC_MIX}" (the RAFT-DVC training mix).')
_NOISE = flags.DEFINE_boolean('noise', True, 'Add Poisson (gain 500) and Gaussian read noise (0.01).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the dataset.', lower_bound=0)
_SPLIT = flags.DEFINE_string('split', None, 'Write into OUTPUT/SPLIT; also seeds the split apart.')
_SKIP_EXISTING = flags.DEFINE_boolean('skip_existing', False,
                                      'Keep samples already on disk (writes are atomic, so they are whole).')

_CONFIG_FLAGS = {'size': _SIZE, 'particle_radius': _RADIUS, 'density': _DENSITY, 'disp_min': _DISP_MIN,
                 'disp_max': _DISP_MAX, 'deformation': _DEFORMATION, 'noise': _NOISE}


def config_from_flags() -> synthetic.SyntheticConfig:
  """The generator config: the preset (if any) with every explicitly given flag applied on top."""
  if _PRESET.value is None:
    return synthetic.SyntheticConfig(**{k: f.value for k, f in _CONFIG_FLAGS.items()})
  given = {k: f.value for k, f in _CONFIG_FLAGS.items() if flags.FLAGS[f.name].present}
  return synthetic.preset(_PRESET.value, **given)


def split_seed(seed: int, split: str | None) -> tuple[int, ...]:
  """The SyntheticDataset seed of a split: (seed,) or (seed, crc32(split))."""
  return (seed,) if not split else (seed, zlib.crc32(split.encode('utf-8')))


class Progress:
  """A small progress bar on stderr: redrawn in place on a terminal, a line per 10 % otherwise."""

  def __init__(self, total: int, label: str, stream=None):
    self.total, self.label, self.done = total, label, 0
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty()
    self.start = time.perf_counter()
    self._last_decile = -1

  def update(self, n: int = 1):
    self.done += n
    rate = self.done / max(time.perf_counter() - self.start, 1e-9)
    eta = (self.total - self.done) / rate if rate > 0 else 0.0
    frac = self.done / self.total
    bar = '#' * int(30 * frac) + '.' * (30 - int(30 * frac))
    text = f'{self.label} [{bar}] {self.done}/{self.total} {rate:.1f}/s eta {eta:.0f}s'
    if self.tty:
      self.stream.write('\r' + text + ('\n' if self.done >= self.total else ''))
    elif int(10 * frac) > self._last_decile or self.done >= self.total:
      self._last_decile = int(10 * frac)
      self.stream.write(text + '\n')
    self.stream.flush()


def write_dataset(config: synthetic.SyntheticConfig, output: str, num_samples: int, seed: int,
                  split: str | None = None, skip_existing: bool = False, progress: bool = True) -> list[str]:
  """Writes num_samples samples; returns their paths."""
  folder = os.path.join(output, split) if split else output
  os.makedirs(folder, exist_ok=True)
  source = datasets.SyntheticDataset(config, split_seed(seed, split))
  width = max(5, len(str(num_samples - 1)))
  bar = Progress(num_samples, os.path.basename(os.path.normpath(folder)) or folder) if progress else None
  paths = []
  for i in range(num_samples):
    path = os.path.join(folder, f'sample_{i:0{width}d}.npz')
    paths.append(path)
    if not (skip_existing and os.path.exists(path)):
      pair = source.pair(i)
      metadata = dict(pair['metadata'], index=i, split=split, dataset_seed=seed)
      io.write_sample(path, pair['I1'], pair['I2'], pair['flow'], json.dumps(metadata, sort_keys=True))
    if bar:
      bar.update()
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    config = config_from_flags()
    write_dataset(config, _OUTPUT.value, _NUM_SAMPLES.value, _SEED.value, _SPLIT.value, _SKIP_EXISTING.value)
  except (ValueError, OSError) as e:  # VolumeError is a ValueError
    print(f'make_dataset: error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  app.run(main)
