"""Training and validation data as config.data describes them, on top of raftdvc_jax.data.

Synthetic by default: an endless on-the-fly stream (or a finite set of `train_size` items) seeded by
(seed, crc32('train')), and a validation set of the first `val_size` items seeded by (seed, crc32('val')),
the same samples `raftdvc-make-dataset --seed S --split val` writes. Or a dataset directory: `dir` with
train/ and val/ splits (RAFT-DVC .npz samples, or vol0/ vol1/ flow/ folders of .npy), or `dir` + `val_dir`.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping

import numpy as np

from raftdvc_jax import batching
from raftdvc_jax import data as data_lib
from raftdvc_jax.data import datasets, synthetic


class GlobalBatchSlice:
  """Process `index` of `count`'s part of the one training stream: rows index*B .. index*B + B - 1 of every
  global batch of count*B, as the endless dataset batches() walks (its position p is the p-th item this
  process loads). Order and augmentation follow the global position, so the global batch of every step is
  the same for any number of processes; each process loads only its rows."""

  def __init__(self, dataset, batch_size: int, index: int, count: int, seed: int, shuffle: bool, augment):
    self.dataset, self.batch_size, self.index, self.count = dataset, batch_size, index, count
    self.seed, self.augment = seed, augment
    length = len(dataset) if hasattr(dataset, '__len__') else None
    self.order = datasets._Order(length, seed, shuffle)  # pylint: disable=protected-access

  def __getitem__(self, p: int):
    step, row = divmod(p, self.batch_size)
    position = (step * self.count + self.index) * self.batch_size + row
    return datasets.load_sample(self.dataset, position, self.order(position), self.seed, self.augment)


class FiniteView:
  """The first `length` items of an endless dataset, as a finite one (walked in a new order each epoch)."""

  def __init__(self, dataset, length: int):
    self.dataset, self.length = dataset, length

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, i: int):
    if not 0 <= i < self.length:
      raise IndexError(i)
    return self.dataset[i]


def _split_dirs(cfg: Mapping[str, Any]) -> tuple[str, str | None]:
  root = os.fspath(cfg['dir'])
  train = os.path.join(root, 'train') if os.path.isdir(os.path.join(root, 'train')) else root
  val = cfg.get('val_dir') or None
  if val is None and os.path.isdir(os.path.join(root, 'val')):
    val = os.path.join(root, 'val')
  return train, val


def synthetic_config(cfg: Mapping[str, Any]) -> synthetic.SyntheticConfig:
  return synthetic.SyntheticConfig.from_dict(dict(cfg['synthetic']))


def train_dataset(cfg: Mapping[str, Any], seed: int):
  """The training dataset (all of it; train_batches picks this process's rows)."""
  if cfg.get('dir'):
    ds = datasets.open_directory(_split_dirs(cfg)[0])
  else:
    ds = datasets.SyntheticDataset(synthetic_config(cfg), datasets.split_seed(seed, 'train'))
    if cfg.get('train_size', 0):
      ds = FiniteView(ds, int(cfg['train_size']))
  return ds


def augmentation(cfg: Mapping[str, Any]) -> data_lib.Augment | None:
  """config.data.augment as an Augment (None when it does nothing)."""
  a = cfg.get('augment') or {}
  flip_prob = float(a.get('flip_prob', 0.0))
  planes = tuple(tuple(p) for p in a.get('rot90_planes', ()) or ())
  crop = a.get('crop') or None
  if isinstance(crop, (list, tuple)):
    crop = tuple(int(c) for c in crop)
  if flip_prob == 0 and not planes and crop is None:
    return None
  return data_lib.Augment(flip_prob=flip_prob, planes=planes, crop=crop)


def train_batches(cfg: Mapping[str, Any], batch_size: int, seed: int, start_step: int,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows (batch_size of them) of the global batches of step start_step, start_step + 1, ...
  (background-loaded); the global batch does not depend on the process count."""
  ds = GlobalBatchSlice(train_dataset(cfg, seed), batch_size, process_index, process_count, int(seed),
                        shuffle=True, augment=augmentation(cfg))
  return datasets.batches(ds, batch_size, seed=int(seed), shuffle=False, augment=None,
                          start_step=start_step, num_workers=int(cfg.get('num_workers', 2)),
                          prefetch=int(cfg.get('prefetch', 2)), processes=bool(cfg.get('processes', False)))


def validation_set(cfg: Mapping[str, Any], seed: int) -> list[dict[str, np.ndarray]]:
  """The fixed validation samples ({'vol0', 'vol1', 'flow'[, 'mask']}), loaded once; [] when val_size is 0."""
  n = int(cfg.get('val_size', 0))
  if n <= 0:
    return []
  if cfg.get('dir'):
    val_dir = _split_dirs(cfg)[1]
    if val_dir is None:
      raise ValueError(f'{cfg["dir"]}: no val/ split for validation; set config.data.val_dir, or '
                       'config.data.val_size=0 to train without validation')
    ds = datasets.open_directory(val_dir)
    n = min(n, len(ds))
  else:
    ds = datasets.SyntheticDataset(synthetic_config(cfg), datasets.split_seed(seed, 'val'))
  keys = ('vol0', 'vol1', 'flow', 'mask')
  return [{k: np.asarray(s[k], np.float32) for k in keys if k in s} for s in (ds[i] for i in range(n))]


def validation_batches(samples, batch_size: int):
  """Groups of equal-shape samples, stacked, `batch_size` at most; the last of a group is padded by repeating
  its last sample. Yields (batch, number of real samples)."""
  groups: dict[tuple, list] = {}
  for s in samples:
    groups.setdefault(tuple(s['flow'].shape) + ('mask' in s,), []).append(s)
  for group in groups.values():
    for chunk, real in batching.padded_chunks(group, batch_size):
      yield datasets.collate(chunk), real
