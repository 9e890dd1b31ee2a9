"""Atomic writes: a temporary path beside the target, renamed into place only when writing succeeded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path) -> Iterator[str]:
  """Yields a temporary path beside `path` (same suffix) and renames it onto `path` when the block succeeds."""
  path = os.path.abspath(os.fspath(path))
  folder, name = os.path.split(path)
  os.makedirs(folder, exist_ok=True)
  root, ext = os.path.splitext(name)
  # Same suffix at the end: np.save and the TIFF/HDF5 writers look at it.
  tmp = os.path.join(folder, f'.{root}.{uuid.uuid4().hex[:12]}.tmp{ext}')
  try:
    yield tmp
    replace(tmp, path)
  except BaseException:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
    elif os.path.exists(tmp):
      os.remove(tmp)
    raise


def replace(src, dst) -> None:
  """Renames finished `src` (a file or folder on the same file system) onto `dst`, replacing what is there."""
  if os.path.isdir(src) and os.path.isdir(dst):
    # os.replace cannot replace a non-empty directory: move the old one aside first.
    old = f'{src}.old'
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(src, dst)


def write_text(path, text: str) -> None:
  """Writes `text` to `path` atomically (a reader sees the old file or the new one, never a part)."""
  with atomic_path(path) as tmp:
    with open(tmp, 'w', newline='') as f:
      f.write(text)


def write_json(path, obj) -> None:
  """Writes `obj` as indented, key-sorted JSON to `path` atomically."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')
