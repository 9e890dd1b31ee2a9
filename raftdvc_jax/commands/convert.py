r"""Converts a PyTorch RAFT-DVC or VolRAFT checkpoint into a converted (Orbax) checkpoint directory.

  raftdvc-convert --checkpoint best_model.pth --output s4_converted [--verify]
  raftdvc-convert --checkpoint model_epoch009999.pt --output volraft_converted \
      [--volraft_config config_20240119_184617_980292.yaml]
  raftdvc-convert --checkpoint weights.pth --encoder_type 1/4 --output bare_converted

The file is read without torch and without executing anything in it: a pickle that names any global outside a
small allowlist of tensor/container rebuilders is refused. The kind of checkpoint (RAFT-DVC, upstream VolRAFT,
a VolRAFT port shipped with RAFT-DVC, a bare state dict) is detected, the model config is built from its
model_config / VolRAFT YAML / the weights, and every tensor is checked by name and shape. OUTPUT gets
variables/ (Orbax), model_config.json and provenance.json; it appears only when everything succeeded.
--verify runs the PyTorch reference (raftdvc_jax.reference; needs the [torch] extra) and the converted JAX
model on a random pair before committing, and fails when they differ by more than 1e-4 + 2e-5 * max|flow|.
"""

from __future__ import annotations

import sys

from absl import flags

from raftdvc_jax import cli
from raftdvc_jax.convert import run as convert_run
from raftdvc_jax.convert import sources
from raftdvc_jax.model.config import ENCODERS, SAMPLERS

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'PyTorch checkpoint (.pth/.pt) to convert.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Directory to create with the converted checkpoint.', required=True)
_VOLRAFT_CONFIG = flags.DEFINE_string(
    'volraft_config', None, 'VolRAFT YAML config of an upstream VolRAFT .pt (default: the last *.yaml with '
    'corr_levels beside the checkpoint, as VolRAFT picks it).')
_FORMAT = flags.DEFINE_enum('format', 'auto', list(sources.FORMATS),
                            'Network family to expect; auto detects it from the keys.')
_ENCODER_TYPE = flags.DEFINE_enum('encoder_type', None, sorted(ENCODERS),
                                  'Encoder of a bare RAFT-DVC state dict (its weights do not show the stride).')
_SAMPLER = flags.DEFINE_enum('sampler', None, list(SAMPLERS),
                             'Sampler convention of a bare state dict (default: exact for RAFT-DVC, volraft '
                             'for VolRAFT).')
_OVERWRITE = flags.DEFINE_boolean('overwrite', False, 'Replace OUTPUT if it is a converted checkpoint.')
_VERIFY = flags.DEFINE_boolean('verify', False, 'Compare with the PyTorch reference before writing (needs torch).')
_VERIFY_SIZE = flags.DEFINE_list('verify_size', None, 'Volume size X0,X1,X2 for --verify (default: a small '
                                 'non-cubic size with an 8-10 voxel feature grid).')
_VERIFY_ITERS = flags.DEFINE_integer('verify_iters', None, 'Iterations for --verify (default: the config\'s).',
                                     lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random --verify pair.')


def say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_logs()
  cli.run(lambda: convert_run.convert_file(
      _CHECKPOINT.value, _OUTPUT.value, _FORMAT.value, _VOLRAFT_CONFIG.value, _ENCODER_TYPE.value, _SAMPLER.value,
      _OVERWRITE.value, _VERIFY.value, _VERIFY_SIZE.value, _VERIFY_ITERS.value, _SEED.value, say))


def entry():
  cli.start(main)


if __name__ == '__main__':
  entry()
