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
import multiprocessing
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from raftdvc_jax.data import io
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
  """root/vol0/*.npy, root/vol1/*.npy, root/flow/*.npy [, root/mask/*.npy], matched by file name."""

  def __init__(self, root):
    self.root = os.fspath(root)
    folders = {k: os.path.join(self.root, k) for k in ('vol0', 'vol1', 'flow', 'mask')}
    for k in ('vol0', 'vol1', 'flow'):
      if not os.path.isdir(folders[k]):
        raise io.VolumeError(f'{folders[k]}: no such directory (expected vol0/, vol1/, flow/ [, mask/])')
    if not os.path.isdir(folders['mask']):
      del folders['mask']
    names = {k: sorted(n for n in os.listdir(d) if n.endswith('.npy')) for k, d in folders.items()}
    self.names = names['vol0']
    if not self.names:
      raise io.VolumeError(f'{folders["vol0"]}: no .npy files')
    for k, listed in names.items():
      missing = sorted(set(self.names) - set(listed))
      extra = sorted(set(listed) - set(self.names))
      if missing:
        raise io.VolumeError(f'{os.path.join(folders[k], missing[0])}: missing, but vol0/ has it')
      if extra:
        raise io.VolumeError(f'{os.path.join(folders[k], extra[0])}: has no partner in vol0/')
    self.folders = folders

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, i: int) -> dict[str, Any]:
    name = self.names[i]
    path = {k: os.path.join(d, name) for k, d in self.folders.items()}
    vol0, vol1, flow = io.read_pair(path['vol0'], path['vol1'], path['flow'], mmap=False)
    out = {'vol0': np.asarray(vol0, np.float32), 'vol1': np.asarray(vol1, np.float32), 'flow': flow,
           'name': name}
    if 'mask' in path:
      mask = io.read_volume(path['mask'], mmap=False)
      if mask.shape != vol0.shape:
        raise io.VolumeError(f'{path["mask"]}: shape {mask.shape} does not match {path["vol0"]} {vol0.shape}')
      out['mask'] = mask.astype(np.float32)
    return out


class SyntheticDataset:
  """An endless source of on-the-fly pairs: item i is make_pair(config, seed=(*seed, i)), any i >= 0.

  Item i depends on nothing else, so a stream resumes exactly from any index, and tools/make_dataset.py
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
