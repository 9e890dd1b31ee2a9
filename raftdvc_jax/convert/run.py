"""Converting a PyTorch checkpoint file into a converted (Orbax) directory, optionally verified against PyTorch.

The file is read without torch and without executing anything in it (convert.torch_reader), its kind is
detected and its model config built (convert.sources), every tensor is checked by name and shape, and the
directory appears only when everything succeeded (orbax_io.save). verify() runs the PyTorch reference
(raftdvc_jax.reference, needs torch) and the converted JAX model on a random pair before the directory is
committed; raftdvc-convert is the command over convert_file().
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Sequence

import numpy as np

from raftdvc_jax.convert import orbax_io
from raftdvc_jax.convert import sources
from raftdvc_jax.model.config import ModelConfig

log = logging.getLogger(__name__)


def check_replaceable(path: str) -> None:
  """Refuses to overwrite anything but a converted checkpoint: a folder holding only what convert writes."""
  expected = {orbax_io.VARIABLES_DIR, orbax_io.CONFIG_FILE, orbax_io.PROVENANCE_FILE}
  entries = set(os.listdir(path)) if os.path.isdir(path) else None
  if entries is None or not {orbax_io.VARIABLES_DIR, orbax_io.CONFIG_FILE} <= entries or entries - expected:
    other = f' (it also holds {", ".join(sorted(entries - expected))})' if entries and entries - expected else ''
    raise ValueError(f'{path}: --overwrite replaces only a converted checkpoint ({", ".join(sorted(expected))})'
                     f'{other}; this is not one, so it is left alone')


def verify_size(config: ModelConfig, given: Sequence | None = None) -> tuple[int, int, int]:
  """The verification volume size: given, or a non-cubic size with a feature grid of 8, 9, 10 (or coarser)."""
  if given:
    try:
      size = tuple(int(v) for v in given)
    except ValueError:
      raise ValueError(f'--verify_size {",".join(map(str, given))} is not X0,X1,X2') from None
    if len(size) != 3 or min(size) < config.min_size:
      raise ValueError(f'--verify_size needs three sides >= {config.min_size} for this network')
    return size
  g = max(8, 2 ** (config.corr_levels - 1))
  return tuple(config.stride * (g + k) for k in range(3))


def verify(directory: str, source: sources.Source, size, iters: int | None = None, seed: int = 0) -> str:
  """Compares the PyTorch reference on the source weights with the JAX model read back from `directory`.

  Returns the one-line verdict; raises ValueError when the flows differ by more than the parity tolerance
  1e-4 + 2e-5 * max|flow|, and ImportError when torch is not installed.
  """
  # pylint: disable=import-outside-toplevel
  from scipy import ndimage
  import jax
  from raftdvc_jax import reference
  from raftdvc_jax.model.raft import RAFTDVC
  ref = reference.load()
  import torch
  config = source.config
  iters = iters or config.iters
  model = ref.build(config.to_dict())
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in source.state_dict.items()}, strict=True)
  rng = np.random.default_rng(seed)
  vol0 = ndimage.gaussian_filter(rng.random(size), 1.0).astype(np.float32)
  vol1 = np.roll(vol0, (1, -2, 1), axis=(0, 1, 2))
  t0 = time.perf_counter()
  with torch.no_grad():
    want = model(torch.from_numpy(vol0)[None, None], torch.from_numpy(vol1)[None, None], iters=iters)[-1]
  want = want[0].numpy()
  t1 = time.perf_counter()
  stored_config, variables, _ = orbax_io.load_variables(directory)
  got = RAFTDVC(stored_config).apply(variables, vol0[None], vol1[None], iters=iters).flow
  got = np.moveaxis(np.asarray(jax.device_get(got))[0], -1, 0)  # (3, X0, X1, X2), as PyTorch gives it
  t2 = time.perf_counter()
  diff = float(np.abs(got - want).max())
  scale = float(np.abs(want).max())
  tolerance = 1e-4 + 2e-5 * scale
  if diff > tolerance:
    raise ValueError(f'{source.path}: verification failed: the converted model differs from PyTorch by {diff:.3g} '
                     f'> {tolerance:.3g}; nothing written')
  return (f'verify: max |flow_jax - flow_torch| = {diff:.3g} voxel on a {size} pair, {iters} iterations '
          f'(max |flow| {scale:.3g}, tolerance {tolerance:.3g}; torch {t1 - t0:.1f} s, jax {t2 - t1:.1f} s): ok')


def convert_file(path, output, fmt: str = 'auto', volraft_config: str | None = None,
                 encoder_type: str | None = None, sampler: str | None = None, overwrite: bool = False,
                 verify_with_torch: bool = False, verify_shape: Sequence | None = None,
                 verify_iters: int | None = None, seed: int = 0, say: Callable[[str], None] = log.info) -> str:
  """Converts a RAFT-DVC / VolRAFT .pth/.pt into a converted directory at `output`; returns its path.

  say(line) reports each stage (detected kind, notes, verification). With overwrite, only an existing
  converted checkpoint is replaced. With verify_with_torch, nothing is written unless PyTorch agrees.
  """
  src, out = os.fspath(path), os.path.abspath(os.fspath(output))
  if verify_with_torch:
    from raftdvc_jax import reference  # pylint: disable=import-outside-toplevel
    try:
      reference.load()
    except ImportError as e:  # refused before anything is read: the user asked for the check
      raise ValueError(f'--verify: {e}') from None
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f'{out}: already exists (pass --overwrite to replace it)')
  if os.path.exists(out):
    check_replaceable(out)
  if os.path.exists(src) and os.path.exists(out) and os.path.samefile(src, out):
    raise ValueError(f'{out}: --output must differ from --checkpoint')
  t0 = time.perf_counter()
  say(f'reading {src}')
  source = sources.load_source(src, fmt, volraft_config, encoder_type, sampler)
  say(f'detected {source.kind}: {source.config.describe()}')
  for note in source.notes:
    say(f'note: {note}')
  variables = sources.to_variables(source)
  size = verify_size(source.config, verify_shape) if verify_with_torch else None
  say(f'mapped {len(source.state_dict)} tensors; writing {out}')

  def check(tmp_dir):
    if verify_with_torch:
      say(verify(tmp_dir, source, size, verify_iters, seed))

  orbax_io.save(out, source.config, variables, source.provenance(), overwrite=overwrite, before_commit=check)
  say(f'wrote {out} in {time.perf_counter() - t0:.1f} s')
  return out
