"""Datasets of volume pairs and a background-thread batch iterator for training.

A dataset is anything with __getitem__(i) -> {'vol0', 'vol1': float32 (X0, X1, X2), 'flow': float32
(3, X0, X1, X2), 'mask'?: float32 (X0, X1, X2)}; with __len__ it is finite, without it endless (the synthetic
source). `batches` turns one into a stream of stacked numpy batches whose content depends only on
(seed, step): the same arguments give the same batches, whatever the thread timing, and a run resumes
exactly by passing start_step.
"""

from __future__ import annotations

import collections
import concurrent.futures
import glob
import json
import logging
import multiprocessing
import os
import zlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from raftdvc_jax import progress as progress_lib
from raftdvc_jax.data import io
from raftdvc_jax.data import pairs as pairs_lib
from raftdvc_jax.data import synthetic

BATCH_KEYS = ('vol0', 'vol1', 'flow', 'mask')


class NpzDataset:
  """A directory of RAFT-DVC sample files (root[/split]/*.npz with I1, I2, flow [, mask]), in name order."""

  def __init__(self, root, split: str | None = None, pattern: str = '*.npz'):
    self.root = os.path.join(os.fspath(root), split) if split else os.fspath(root)
    if not os.path.isdir(self.root):
      raise io.VolumeError(f'{self.root}: no such directory')
    self.files = sorted(glob.glob(os.path.join(glob.escape(self.root), pattern)))
    if not self.files:
      raise io.VolumeError(f'{self.root}: no files match {pattern}')

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> dict[str, Any]:
    s = io.read_sample(self.files[i])
    out = {'vol0': s['I1'], 'vol1': s['I2'], 'flow': s['flow'], 'name': os.path.basename(self.files[i])}
    if 'mask' in s:
      out['mask'] = s['mask']
    return out


class PairDirectoryDataset:
  """Pairs with their flows in a folder, by the naming rule of pairs.py (vol0/ vol1/ flow/ [mask/] folders,
  NAME_vol0.* NAME_vol1.* NAME_flow.* files, or NAME.npz samples), in name order."""

  def __init__(self, root):
    self.root = os.fspath(root)
    self.pairs = pairs_lib.find_pairs(self.root, roles=('vol0', 'vol1', 'flow'))
    self.names = [p.name for p in self.pairs]

  def __len__(self) -> int:
    return len(self.pairs)

  def __getitem__(self, i: int) -> dict[str, Any]:
    arrays = pairs_lib.read_pair(self.pairs[i], mmap=False, check=True)
    out = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
    out['name'] = self.names[i]
    return out


def open_directory(path):
  """The dataset in a directory: vol0/ vol1/ flow/ folders (PairDirectoryDataset), or .npz samples (NpzDataset)."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise io.VolumeError(f'{path}: no such dataset directory')
  if os.path.isdir(os.path.join(path, 'vol0')):
    return PairDirectoryDataset(path)
  return NpzDataset(path)


def sample_paths(output, num_samples: int, split: str | None = None) -> list[str]:
  """OUTPUT[/SPLIT]/sample_NNNNN.npz of every sample of a written dataset."""
  folder = os.path.join(os.fspath(output), split) if split else os.fspath(output)
  width = max(5, len(str(num_samples - 1)))
  return [os.path.join(folder, f'sample_{i:0{width}d}.npz') for i in range(num_samples)]


def write_synthetic(config: synthetic.SyntheticConfig, output, num_samples: int, seed: int,
                    split: str | None = None, skip_existing: bool = False, progress: bool = True) -> list[str]:
  """Writes num_samples synthetic pairs in RAFT-DVC's .npz layout (I1, I2, flow, metadata); returns the paths.

  Sample i is SyntheticDataset(config, split_seed(seed, split))[i], so the same arguments give the same files
  and training on the fly sees the same data. Each file is written atomically.
  """
  if config.disp_max > min(config.shape) / 4:
    logging.getLogger(__name__).warning(
        'disp_max %g exceeds a quarter of the %d-voxel volume: many beads leave the volume and the flow there '
        'has no image evidence', config.disp_max, min(config.shape))
  paths = sample_paths(output, num_samples, split)
  os.makedirs(os.path.dirname(paths[0]), exist_ok=True)
  source = SyntheticDataset(config, split_seed(seed, split))
  with progress_lib.bar(num_samples, os.path.basename(os.path.dirname(paths[0])) or os.fspath(output), progress,
                        unit='sample') as bar:
    for i, path in enumerate(paths):
      if not (skip_existing and os.path.exists(path)):
        pair = source.pair(i)
        metadata = dict(pair['metadata'], index=i, split=split, dataset_seed=seed)
        io.write_sample(path, pair['I1'], pair['I2'], pair['flow'], json.dumps(metadata, sort_keys=True))
      bar.update(1)
  return paths


def split_seed(seed: int, split: str | None = None) -> tuple[int, ...]:
  """The SyntheticDataset seed of a split: (seed, crc32(split)), or (seed,) without a split; splits of one
  seed are thereby different data, and raftdvc-make-dataset writes what training streams on the fly."""
  return (int(seed),) if not split else (int(seed), zlib.crc32(split.encode('utf-8')))


class SyntheticDataset:
  """An endless source of on-the-fly pairs: item i is make_pair(config, seed=(*seed, i)), any i >= 0.

  Item i depends on nothing else, so a stream resumes exactly from any index, and raftdvc-make-dataset
  with the same config and seed writes the same samples to disk.
  """

  def __init__(self, config: synthetic.SyntheticConfig, seed: int | Sequence[int] = 0):
    self.config = config
    self.seed = (int(seed),) if np.isscalar(seed) else tuple(int(s) for s in seed)
    if any(s < 0 for s in self.seed):
      raise ValueError(f'seed must be non-negative, got {seed}')

  def pair(self, i: int) -> dict[str, Any]:
    """The raw make_pair output of item i (I1, I2, flow, metadata)."""
    if i < 0:
      raise IndexError(f'synthetic item index must be >= 0, got {i}')
    return synthetic.make_pair(self.config, self.seed + (int(i),))

  def __getitem__(self, i: int) -> dict[str, Any]:
    p = self.pair(i)
    return {'vol0': p['I1'], 'vol1': p['I2'], 'flow': p['flow'], 'metadata': p['metadata']}


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """Stacks vol0, vol1, flow (and mask when every sample has one) into a batch; other keys are dropped."""
  keys = [k for k in BATCH_KEYS if all(k in s for s in samples)]
  for k in ('vol0', 'vol1', 'flow'):
    if k not in keys:
      raise ValueError(f'a sample has no {k!r}')
  shapes = {tuple(np.shape(s['flow'])) for s in samples}
  if len(shapes) > 1:
    raise ValueError(f'samples of one batch differ in shape {sorted(shapes)}; crop them to one size '
                     '(Augment(crop=...))')
  dtypes = {'vol0': np.float32, 'vol1': np.float32, 'flow': np.float32, 'mask': np.float32}
  return {k: np.stack([np.asarray(s[k], dtypes[k]) for s in samples]) for k in keys}


class _Order:
  """Maps a position in the endless stream to a dataset index: a fresh permutation per epoch."""

  def __init__(self, length: int | None, seed: int, shuffle: bool):
    self.length, self.seed, self.shuffle = length, seed, shuffle
    self._perms = {}

  def __call__(self, position: int) -> int:
    if self.length is None:
      return position
    epoch, offset = divmod(position, self.length)
    if not self.shuffle:
      return offset
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, 0, epoch]).permutation(self.length)
      self._perms = {epoch: perm}  # positions only move forward: keep the current epoch's alone
    return int(perm[offset])


def load_sample(dataset, position: int, index: int, seed: int,
                augment: Callable[[Mapping[str, Any], np.random.Generator], Mapping[str, Any]] | None = None):
  """Item `index` of dataset, augmented with a generator seeded by (seed, position)."""
  sample = dataset[index]
  if augment is not None:
    sample = augment(sample, np.random.default_rng([seed, 1, position]))
  return sample


# In a worker process: the dataset and augmentation, sent once when the process starts.
_WORKER_STATE = {}


def _init_worker(dataset, augment):
  _WORKER_STATE.update(dataset=dataset, augment=augment)


def _load_in_worker(position: int, index: int, seed: int):
  return load_sample(_WORKER_STATE['dataset'], position, index, seed, _WORKER_STATE['augment'])


def batches(dataset, batch_size: int, *, seed: int = 0, shuffle: bool = True, augment=None,
            start_step: int = 0, num_steps: int | None = None, num_workers: int = 2, prefetch: int = 2,
            processes: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Yields batches {'vol0', 'vol1': (B, X0, X1, X2), 'flow': (B, 3, X0, X1, X2)[, 'mask']} of numpy arrays.

  Batch `step` holds stream positions step*B .. step*B + B - 1; a finite dataset is walked in a new
  permutation each epoch (batches may straddle epochs), an endless one in index order. Samples are loaded
  and augmented by `num_workers` background threads (or, with processes=True, spawned processes, which
  the GIL does not hold back; dataset and augment must then pickle), `prefetch` batches ahead. Endless
  unless num_steps is given.
  """
  if batch_size < 1 or num_workers < 1 or prefetch < 1 or start_step < 0 or seed < 0:
    raise ValueError('batch_size, num_workers and prefetch must be >= 1, start_step and seed >= 0')
  length = len(dataset) if hasattr(dataset, '__len__') else None
  if length == 0:
    raise ValueError('the dataset is empty')
  order = _Order(length, seed, shuffle)
  end = None if num_steps is None else start_step + num_steps
  if processes:
    # spawn, not fork: forking a process that has started JAX (or any thread pool) can deadlock.
    pool = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context('spawn'), initializer=_init_worker,
        initargs=(dataset, augment))
    submit = lambda p: pool.submit(_load_in_worker, p, order(p), seed)
  else:
    pool = concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix='raftdvc-data')
    submit = lambda p: pool.submit(load_sample, dataset, p, order(p), seed, augment)
  pending = collections.deque()
  step = start_step
  try:
    while True:
      while len(pending) < prefetch and (end is None or step < end):
        pending.append([submit(p) for p in range(step * batch_size, (step + 1) * batch_size)])
        step += 1
      if not pending:
        return
      yield collate([f.result() for f in pending.popleft()])
  finally:
    pool.shutdown(wait=False, cancel_futures=True)
