"""Finding volume pairs in a folder: the one naming rule that inference batch mode and training datasets share.

A folder of pairs has one of three layouts (ROLE is vol0, vol1, and for training flow; mask is optional):

  ROLE/NAME.*          one sub-folder per role, files (or slice folders) matched by NAME;
  NAME_ROLE.*          files (or slice folders) side by side;
  NAME.npz             one file per pair holding the arrays of a RAFT-DVC sample (I1, I2[, flow, mask]).

Volume files are those with a suffix in io.VOLUME_SUFFIXES; hidden entries are skipped. A name found for some
roles but not all is refused, naming the missing file, so a folder that inference accepts is read the same
way by training (which also needs the flows).
"""

from __future__ import annotations

import os
import zipfile
from typing import NamedTuple, Sequence

from raftdvc_jax.data import io

NPZ_KEYS = {'vol0': 'I1', 'vol1': 'I2', 'flow': 'flow', 'mask': 'mask'}  # role -> array of a sample .npz
RESULT_SUFFIX = '_flow'  # what inference writes; skipped when the flow is not a role (output beside input)


class Source(NamedTuple):
  """A volume (or flow) in a file, or one array of a pair file: where it is, how messages name it."""

  path: str
  key: str | None = None

  def __str__(self) -> str:
    return self.path if self.key is None else f'{self.path}[{self.key}]'

  def read(self, mmap: bool = True, check: bool = False):
    """The volume, memory-mapped or lazy where the format allows; check=True scans it for NaN/inf."""
    return io.read_volume(self.path, mmap=mmap, key=self.key, check=check)

  def read_flow(self, mmap: bool = True, check: bool = False):
    """The array as a flow (3, X0, X1, X2)."""
    return io.read_flow(self.path, mmap=mmap, key=self.key, check=check)


class Pair(NamedTuple):
  """One pair: its name and a Source per role (vol0, vol1[, flow][, mask])."""

  name: str
  sources: dict

  def get(self, role: str) -> Source | None:
    return self.sources.get(role)


def _volumes_by_name(folder: str) -> dict[str, str]:
  """Volume files (by suffix) and slice folders in a folder, by name without suffix; hidden ones skipped."""
  found: dict[str, str] = {}
  for entry in sorted(os.listdir(folder)):
    path = os.path.join(folder, entry)
    stem, suffix = os.path.splitext(entry)
    if entry.startswith('.'):
      continue
    if os.path.isdir(path):
      stem = entry
    elif suffix.lower() not in io.VOLUME_SUFFIXES:
      continue
    if stem in found:
      raise io.VolumeError(f'{path}: two volumes named {stem!r} ({os.path.basename(found[stem])} and {entry})')
    found[stem] = path
  return found


def _npz_arrays(path: str) -> set[str]:
  if not path.lower().endswith('.npz'):
    return set()
  try:
    with zipfile.ZipFile(path) as zf:
      return {n[:-4] for n in zf.namelist() if n.endswith('.npy')}
  except (OSError, zipfile.BadZipFile):
    return set()


def _by_role_folders(folder: str, roles: Sequence[str], optional: Sequence[str]) -> dict[str, dict[str, str]]:
  tables = {}
  for role in (*roles, *optional):
    sub = os.path.join(folder, role)
    if os.path.isdir(sub):
      tables[role] = _volumes_by_name(sub)
    elif role in roles:
      raise io.VolumeError(f'{sub}: no such folder (a folder of pairs by role needs {", ".join(roles)}/ '
                           f'[{", ".join(optional)}/])')
  return tables


def _by_suffix(folder: str, roles: Sequence[str], optional: Sequence[str]):
  """(tables of NAME_ROLE entries by role, {name: pair file}) of a flat folder."""
  tables = {role: {} for role in (*roles, *optional)}
  pair_files = {}
  for stem, path in _volumes_by_name(folder).items():
    role = next((r for r in tables if stem.endswith('_' + r) and len(stem) > len(r) + 1), None)
    if role is not None:
      tables[role][stem[:-len(role) - 1]] = path
    elif stem.endswith(RESULT_SUFFIX) or os.path.isdir(path):
      continue  # earlier results (the output folder may be the input folder), folders that are not stacks
    elif {NPZ_KEYS[r] for r in roles} <= _npz_arrays(path):
      pair_files[stem] = path
    else:
      raise io.VolumeError(f'{path}: not part of a pair; name pairs {" and ".join(f"NAME_{r}.*" for r in roles)}, '
                           f'put them in {" and ".join(f"{r}/" for r in roles)} folders, or store '
                           f'{" and ".join(NPZ_KEYS[r] for r in roles)} in one NAME.npz')
  return {r: t for r, t in tables.items() if t or r in roles}, pair_files


def find_pairs(folder, roles: Sequence[str] = ('vol0', 'vol1'), optional: Sequence[str] = ('mask',)) -> list[Pair]:
  """Every pair in `folder` (layouts in the module docstring), by name; VolumeError naming what is wrong."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise io.VolumeError(f'{folder}: no such directory')
  if any(os.path.isdir(os.path.join(folder, r)) for r in roles):
    tables, pair_files = _by_role_folders(folder, roles, optional), {}
  else:
    tables, pair_files = _by_suffix(folder, roles, optional)
  names = set().union(*(tables[r] for r in roles))
  for role in roles:
    missing = sorted(names - set(tables[role]))
    if missing:
      other = next(tables[r][missing[0]] for r in roles if missing[0] in tables[r])
      more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
      raise io.VolumeError(f'{_partner_path(other, role)}: missing, but {other} is there{more}')
  for role in optional:
    stray = sorted(set(tables.get(role, ())) - names - set(pair_files))
    if stray:
      raise io.VolumeError(f'{tables[role][stray[0]]}: a {role} without a pair named {stray[0]!r}')
  clash = sorted(names & set(pair_files))
  if clash:
    raise io.VolumeError(f'{pair_files[clash[0]]}: a pair named {clash[0]!r} is also given as separate files')
  pairs = [Pair(n, {r: Source(t[n]) for r, t in tables.items() if n in t}) for n in names]
  for n, path in pair_files.items():
    arrays = _npz_arrays(path)
    sources = {r: Source(path, NPZ_KEYS[r]) for r in (*roles, *optional) if NPZ_KEYS[r] in arrays}
    if 'mask' in tables and n in tables['mask']:
      sources['mask'] = Source(tables['mask'][n])
    pairs.append(Pair(n, sources))
  if not pairs:
    raise io.VolumeError(f'{folder}: no pairs found (expected {" and ".join(f"{r}/" for r in roles)} folders with '
                         f'matching names, {" and ".join(f"NAME_{r}.*" for r in roles)} files, or NAME.npz files '
                         f'holding {" and ".join(NPZ_KEYS[r] for r in roles)})')
  return sorted(pairs, key=lambda p: p.name)


def _partner_path(other: str, role: str) -> str:
  """Where the missing partner of `other` would be: same file name, in the role's folder or with its suffix."""
  folder, entry = os.path.split(other)
  parent, sub = os.path.split(folder)
  if sub in NPZ_KEYS:  # by-role folders
    return os.path.join(parent, role, entry)
  stem, suffix = os.path.splitext(entry)
  return os.path.join(folder, stem[:stem.rfind('_')] + f'_{role}' + suffix)


def read_pair(pair: Pair, mmap: bool = True, check: bool = False) -> dict:
  """The arrays of a pair by role, shapes checked against vol0; vol0/vol1 scanned for NaN/inf if check."""
  vol0 = pair.sources['vol0'].read(mmap, check)
  out = {'vol0': vol0}
  for role, src in pair.sources.items():
    if role == 'vol0':
      continue
    a = src.read_flow(mmap, check) if role == 'flow' else src.read(mmap, check or role == 'mask')
    shape = tuple(a.shape[1:] if role == 'flow' else a.shape)
    if shape != tuple(vol0.shape):
      what = 'shape' if role == 'vol1' else f'{role} shape'
      raise io.VolumeError(f'{src}: {what} {shape} does not match {pair.sources["vol0"]} '
                           f'{tuple(vol0.shape)}')
    out[role] = a
  return out
