r"""Writes a synthetic dataset of bead volume pairs with known displacement, in RAFT-DVC's layout.

  raftdvc-make-dataset --output data/r2_32 --split train --num_samples 2000 --preset r2_32 --seed 1

Writes OUTPUT[/SPLIT]/sample_NNNNN.npz with I1, I2 float32 (S, S, S), flow float32 (3, S, S, S) (channel c =
displacement along array axis c, reference -> deformed, I2(x + u(x)) ~ I1(x)) and metadata (a JSON string;
np.load(..., allow_pickle=False) reads it). Sample i of a split is SyntheticDataset(config, seed=(SEED,
crc32(SPLIT)))[i], so the same arguments give byte-identical files and training on the fly sees the same data.
"""

from __future__ import annotations

import os

from absl import flags

from raftdvc_jax import cli
from raftdvc_jax.data import datasets
from raftdvc_jax.data import synthetic

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
_OVERWRITE = flags.DEFINE_boolean('overwrite', False, 'Replace samples already on disk.')

_CONFIG_FLAGS = {'size': _SIZE, 'particle_radius': _RADIUS, 'density': _DENSITY, 'disp_min': _DISP_MIN,
                 'disp_max': _DISP_MAX, 'deformation': _DEFORMATION, 'noise': _NOISE}


def config_from_flags() -> synthetic.SyntheticConfig:
  """The generator config: the preset (if any) with every explicitly given flag applied on top."""
  if _PRESET.value is None:
    return synthetic.SyntheticConfig(**{k: f.value for k, f in _CONFIG_FLAGS.items()})
  given = {k: f.value for k, f in _CONFIG_FLAGS.items() if flags.FLAGS[f.name].present}
  return synthetic.preset(_PRESET.value, **given)


def check_outputs(paths: list[str], skip_existing: bool, overwrite: bool) -> None:
  """Refuses, before generating anything, samples already on disk unless --skip_existing or --overwrite."""
  cli.check_writable(os.path.dirname(paths[0]), 'output folder', folder=True)
  existing = [p for p in paths if os.path.exists(p)]
  if existing and not (skip_existing or overwrite):
    raise ValueError(f'{existing[0]}: exists ({len(existing)} of the {len(paths)} samples do); pass --overwrite '
                     'to replace them or --skip_existing to keep them')


def run() -> None:
  config = config_from_flags()
  check_outputs(datasets.sample_paths(_OUTPUT.value, _NUM_SAMPLES.value, _SPLIT.value), _SKIP_EXISTING.value,
                _OVERWRITE.value)
  datasets.write_synthetic(config, _OUTPUT.value, _NUM_SAMPLES.value, _SEED.value, _SPLIT.value,
                           _SKIP_EXISTING.value)


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_logs()
  cli.run(run)


def entry():
  cli.start(main)


if __name__ == '__main__':
  entry()
