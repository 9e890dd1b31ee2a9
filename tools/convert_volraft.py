r"""Converts a PyTorch RAFT-DVC or VolRAFT checkpoint into a converted (Orbax) checkpoint directory.

  python tools/convert_volraft.py --checkpoint best_model.pth --output ckpt/s4 [--verify]
  python tools/convert_volraft.py --checkpoint model_epoch009999.pt --output ckpt/volraft \
      [--volraft_config config_20240119_184617_980292.yaml]
  python tools/convert_volraft.py --checkpoint weights.pth --encoder_type 1/4 --output ckpt/bare

The file is read without torch and without executing anything in it: a pickle that names any global outside a
small allowlist of tensor/container rebuilders is refused. The kind of checkpoint (RAFT-DVC, upstream VolRAFT,
a VolRAFT port shipped with RAFT-DVC, a bare state dict) is detected, the model config is built from its
model_config / VolRAFT YAML / the weights, and every tensor is checked by name and shape. OUTPUT gets
variables/ (Orbax), model_config.json and provenance.json; it appears only when everything succeeded.
--verify runs the PyTorch reference (tests/torch_reference.py, needs torch) and the converted JAX model on a
random pair before committing, and fails when they differ by more than 1e-4 + 2e-5 * max|flow|.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

from absl import flags

from raftdvc_jax import cli
from raftdvc_jax.convert import orbax_io
from raftdvc_jax.convert import sources
from raftdvc_jax.model.config import ENCODERS, SAMPLERS, ModelConfig

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
_OVERWRITE = flags.DEFINE_boolean('overwrite', False, 'Replace OUTPUT if it exists.')
_VERIFY = flags.DEFINE_boolean('verify', False, 'Compare with the PyTorch reference before writing.')
_VERIFY_SIZE = flags.DEFINE_list('verify_size', None, 'Volume size X0,X1,X2 for --verify (default: a small '
                                 'non-cubic size with an 8-10 voxel feature grid).')
_VERIFY_ITERS = flags.DEFINE_integer('verify_iters', None, 'Iterations for --verify (default: the config\'s).',
                                     lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random --verify pair.')

REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests', 'torch_reference.py')


def _say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def check_replaceable(path: str) -> None:
  """Refuses to --overwrite anything but a converted checkpoint: a folder holding only what convert writes."""
  expected = {orbax_io.VARIABLES_DIR, orbax_io.CONFIG_FILE, orbax_io.PROVENANCE_FILE}
  entries = set(os.listdir(path)) if os.path.isdir(path) else None
  if entries is None or not {orbax_io.VARIABLES_DIR, orbax_io.CONFIG_FILE} <= entries or entries - expected:
    other = f' (it also holds {", ".join(sorted(entries - expected))})' if entries and entries - expected else ''
    raise ValueError(f'{path}: --overwrite replaces only a converted checkpoint ({", ".join(sorted(expected))})'
                     f'{other}; this is not one, so it is left alone')


def verify_size(config: ModelConfig, given=None) -> tuple[int, int, int]:
  """The --verify volume size: given, or a non-cubic size with a feature grid of 8, 9, 10 (or coarser levels)."""
  if given:
    try:
      size = tuple(int(v) for v in given)
    except ValueError:
      raise ValueError(f'--verify_size {",".join(given)} is not X0,X1,X2') from None
    if len(size) != 3 or min(size) < config.min_size:
      raise ValueError(f'--verify_size needs three sides >= {config.min_size} for this network')
    return size
  g = max(8, 2 ** (config.corr_levels - 1))
  return tuple(config.stride * (g + k) for k in range(3))


def _load_reference():
  spec = importlib.util.spec_from_file_location('raftdvc_torch_reference', REFERENCE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def verify(directory: str, source: sources.Source, size, iters, seed: int) -> bool:
  """Runs the PyTorch reference on the source weights and the JAX model read back from `directory`.

  Returns False (after saying why) when torch or the reference is not available; raises ValueError when the
  flows differ by more than the parity tolerance.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    _say('warning: --verify skipped: torch is not installed')
    return False
  if not os.path.isfile(REFERENCE):
    _say(f'warning: --verify skipped: the PyTorch reference {REFERENCE} is not here (source checkout only)')
    return False
  import numpy as np  # pylint: disable=import-outside-toplevel
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.infer.estimator import FlowEstimator  # pylint: disable=import-outside-toplevel

  config = source.config
  iters = iters or config.iters
  reference = _load_reference().build(config.to_dict())
  reference.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in source.state_dict.items()}, strict=True)
  rng = np.random.default_rng(seed)
  vol0 = ndimage.gaussian_filter(rng.random(size), 1.0).astype(np.float32)
  vol1 = np.roll(vol0, (1, -2, 1), axis=(0, 1, 2))
  t0 = time.perf_counter()
  with torch.no_grad():
    want = reference(torch.from_numpy(vol0)[None, None], torch.from_numpy(vol1)[None, None], iters=iters)[-1]
  want = want[0].numpy()
  t1 = time.perf_counter()
  stored_config, variables, provenance = orbax_io.load_variables(directory)
  got = FlowEstimator(stored_config, variables, provenance=provenance)(vol0, vol1, iters=iters)
  t2 = time.perf_counter()
  diff = float(np.abs(got - want).max())
  scale = float(np.abs(want).max())
  tolerance = 1e-4 + 2e-5 * scale
  verdict = 'ok' if diff <= tolerance else 'FAILED'
  _say(f'verify: max |flow_jax - flow_torch| = {diff:.3g} voxel on a {size} pair, {iters} iterations '
       f'(max |flow| {scale:.3g}, tolerance {tolerance:.3g}; torch {t1 - t0:.1f} s, jax {t2 - t1:.1f} s): {verdict}')
  if diff > tolerance:
    raise ValueError(f'{source.path}: verification failed: the converted model differs from PyTorch by {diff:.3g} '
                     f'> {tolerance:.3g}; nothing written')
  return True


def convert() -> str:
  """Runs the conversion described by the flags; returns the written directory."""
  src, out = _CHECKPOINT.value, os.path.abspath(_OUTPUT.value)
  if os.path.exists(out) and not _OVERWRITE.value:
    raise FileExistsError(f'{out}: already exists (pass --overwrite to replace it)')
  if os.path.exists(out):
    check_replaceable(out)
  if os.path.exists(src) and os.path.exists(out) and os.path.samefile(src, out):
    raise ValueError(f'{out}: --output must differ from --checkpoint')
  t0 = time.perf_counter()
  _say(f'reading {src}')
  source = sources.load_source(src, _FORMAT.value, _VOLRAFT_CONFIG.value, _ENCODER_TYPE.value, _SAMPLER.value)
  _say(f'detected {source.kind}: {source.config.describe()}')
  for note in source.notes:
    _say(f'note: {note}')
  variables = sources.to_variables(source)
  size = verify_size(source.config, _VERIFY_SIZE.value) if _VERIFY.value else None
  _say(f'mapped {len(source.state_dict)} tensors; writing {out}')

  def check(tmp_dir):
    if _VERIFY.value:
      verify(tmp_dir, source, size, _VERIFY_ITERS.value, _SEED.value)

  orbax_io.save(out, source.config, variables, source.provenance(), overwrite=_OVERWRITE.value,
                before_commit=check)
  _say(f'wrote {out} in {time.perf_counter() - t0:.1f} s')
  return out


def main(argv):
  cli.no_arguments(argv)
  cli.quiet_logs()
  cli.run(convert)


def entry():
  cli.start(main)


if __name__ == '__main__':
  entry()
