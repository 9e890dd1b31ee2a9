"""Reading and writing volumes, flows and RAFT-DVC sample files.

Volumes are 3-D arrays (X0, X1, X2) in file order; flows are float32 (3, X0, X1, X2), channel c along array
axis c. Formats, chosen by suffix:

  .npy            memory-mapped
  .npz            a named member ('flow' for flows); uncompressed members are memory-mapped
  .tif / .tiff    a 3-D stack (a 4-D one for flows), memory-mapped when stored contiguously and uncompressed
  a directory     a folder of 2-D .tif slices along axis 0, read lazily slice by slice
  .h5 / .hdf5     a dataset (needs h5py: pip install raftdvc_jax[h5]); memory-mapped when contiguous, else lazy

With mmap=True, reads return an np.memmap or a lazy array-like (shape, dtype, basic slicing, np.asarray), so a
volume larger than memory can be read tile by tile. Every problem with a file raises VolumeError, one line that
names the file. Writes go to a temporary name in the target directory and are renamed into place, so a reader
never sees a half-written file.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Any, Callable, Mapping

import numpy as np
import tifffile

from raftdvc_jax.atomic import atomic_path  # re-exported: writers here and callers use it

VOLUME_SUFFIXES = ('.npy', '.npz', '.tif', '.tiff', '.h5', '.hdf5')
_TIF_SLICES = ('.tif', '.tiff')


class VolumeError(ValueError):
  """A volume, flow or sample file that cannot be used; the message names the file and the problem."""


def _fail(path, problem: str) -> VolumeError:
  return VolumeError(f'{os.fspath(path)}: {" ".join(str(problem).split())}')


def _suffix(path) -> str:
  return os.path.splitext(os.fspath(path))[1].lower()


# ---------------------------------------------------------------------------------------------------------
# Lazy array-likes for formats that cannot be memory-mapped as one block.


class PlaneStack:
  """A read-only 3-D array whose planes along axis 0 are read on demand (a folder of 2-D slices)."""

  def __init__(self, shape, dtype, read_plane: Callable[[int], np.ndarray], name: str):
    self.shape = tuple(int(s) for s in shape)
    self.dtype = np.dtype(dtype)
    self.ndim = 3
    self._read_plane = read_plane
    self.name = name

  def __len__(self):
    return self.shape[0]

  def __repr__(self):
    return f'PlaneStack({self.name!r}, shape={self.shape}, dtype={self.dtype})'

  def __getitem__(self, index):
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis or i is None for i in index) or len(index) > 3:
      raise IndexError('PlaneStack supports integer and slice indices only')
    first, rest = index[0], index[1:]
    if isinstance(first, slice):
      planes = [self._read_plane(i)[rest] for i in range(*first.indices(self.shape[0]))]
      if not planes:
        return np.zeros((0,) + np.zeros(self.shape[1:])[rest].shape, self.dtype)
      return np.stack(planes)
    i = int(first)
    if not -self.shape[0] <= i < self.shape[0]:
      raise IndexError(f'index {i} out of range for {self.shape[0]} planes')
    return self._read_plane(i % self.shape[0])[rest]

  def __array__(self, dtype=None, copy=None):
    out = self[:]
    return out if dtype is None else out.astype(dtype)


class H5Volume:
  """A read-only lazy view of one HDF5 dataset; the file is opened per read, so threads can share it."""

  def __init__(self, path, key: str, shape, dtype, lead: tuple = ()):
    self.path, self.key, self._lead = os.fspath(path), key, lead
    self.shape = tuple(int(s) for s in shape)
    self.dtype = np.dtype(dtype)
    self.ndim = len(self.shape)

  def __len__(self):
    return self.shape[0]

  def __repr__(self):
    return f'H5Volume({self.path!r}, {self.key!r}, shape={self.shape}, dtype={self.dtype})'

  def __getitem__(self, index):
    index = index if isinstance(index, tuple) else (index,)
    h5py = _import_h5py(self.path)
    with h5py.File(self.path, 'r') as f:
      return np.asarray(f[self.key][self._lead + index])

  def __array__(self, dtype=None, copy=None):
    out = self[...]
    return out if dtype is None else out.astype(dtype)


# ---------------------------------------------------------------------------------------------------------
# Format readers. Each returns the stored array (np.ndarray, np.memmap or a lazy array-like), unchecked.


def _load_npy(path, mmap: bool):
  with open(path, 'rb') as f:
    if f.read(6) != b'\x93NUMPY':  # np.load would take anything else for a pickle
      raise _fail(path, 'is not a .npy file (no NUMPY magic)')
  return np.load(path, mmap_mode='r' if mmap else None, allow_pickle=False)


def _npz_member(path, key: str | None, prefer: tuple[str, ...] = ()) -> str:
  with zipfile.ZipFile(path) as zf:
    names = [n[:-4] for n in zf.namelist() if n.endswith('.npy')]
  if key is not None:
    if key not in names:
      raise _fail(path, f'has no array {key!r} (has {", ".join(names) or "none"})')
    return key
  for name in prefer:
    if name in names:
      return name
  if len(names) != 1:
    raise _fail(path, f'holds {len(names)} arrays ({", ".join(names)}); name one with key=')
  return names[0]


def _npz_memmap(path, key: str):
  """An np.memmap of an uncompressed .npz member, or None when it is compressed."""
  with zipfile.ZipFile(path) as zf:
    info = zf.getinfo(key + '.npy')
  if info.compress_type != zipfile.ZIP_STORED:
    return None
  with open(path, 'rb') as f:
    # The local file header: 30 fixed bytes, then the name and an extra field whose lengths it gives.
    f.seek(info.header_offset)
    header = f.read(30)
    if header[:4] != b'PK\x03\x04':
      raise _fail(path, f'broken zip entry {key!r}')
    start = info.header_offset + 30 + int.from_bytes(header[26:28], 'little') + int.from_bytes(header[28:30], 'little')
    f.seek(start)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:  # a newer header layout: let np.load read it
      return None
    offset = f.tell()
  if dtype.hasobject:
    raise _fail(path, f'array {key!r} holds Python objects')
  return np.memmap(path, dtype=dtype, mode='r', offset=offset, shape=shape, order='F' if fortran else 'C')


def _load_npz(path, mmap: bool, key: str | None, prefer=()):
  key = _npz_member(path, key, prefer)
  if mmap:
    mapped = _npz_memmap(path, key)
    if mapped is not None:
      return mapped
  with np.load(path, allow_pickle=False) as npz:
    return npz[key]


_TIFF_MAGIC = (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+')


def _load_tif(path, mmap: bool):
  with open(path, 'rb') as f:
    if f.read(4) not in _TIFF_MAGIC:
      raise _fail(path, 'is not a TIFF file (bad header)')
  try:
    if mmap:
      try:
        return tifffile.memmap(path, mode='r')
      except ValueError:  # compressed or scattered strips: fall through to a full read
        pass
    return tifffile.imread(path)
  except IndexError:  # tifffile's answer to a header that points at no page
    raise _fail(path, 'is not a readable TIFF (no image pages)') from None


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def _load_slice_folder(path, mmap: bool):
  names = sorted((n for n in os.listdir(path) if _suffix(n) in _TIF_SLICES and not n.startswith('.')),
                 key=_natural_key)
  if not names:
    raise _fail(path, 'is a directory without .tif slices')
  files = [os.path.join(path, n) for n in names]
  with tifffile.TiffFile(files[0]) as tf:
    series = tf.series[0]
    shape, dtype = series.shape, series.dtype
  if len(shape) != 2:
    raise _fail(files[0], f'a slice of a folder stack must be 2-D, got shape {shape}')

  def read_plane(i):
    try:
      plane = tifffile.imread(files[i])
    except Exception as e:  # tifffile raises several types for a bad file
      raise _fail(files[i], f'cannot read: {e}') from None
    if plane.shape != tuple(shape) or plane.dtype != dtype:
      raise _fail(files[i], f'slice is {plane.shape} {plane.dtype}, the first is {tuple(shape)} {dtype}')
    return plane

  stack = PlaneStack((len(files),) + tuple(shape), dtype, read_plane, os.fspath(path))
  return stack if mmap else stack[:]


def _import_h5py(path):
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise _fail(path, 'reading HDF5 needs h5py: pip install "raftdvc_jax[h5]"') from None
  return h5py


def _h5_key(f, path, key, prefer=()) -> str:
  names = []
  f.visititems(lambda name, obj: names.append(name) if hasattr(obj, 'shape') else None)
  if key is not None:
    if key.strip('/') not in names:
      raise _fail(path, f'has no dataset {key!r} (has {", ".join(names) or "none"})')
    return key.strip('/')
  for name in prefer:
    if name in names:
      return name
  if len(names) != 1:
    raise _fail(path, f'holds {len(names)} datasets ({", ".join(names)}); name one with key=')
  return names[0]


def _load_h5(path, mmap: bool, key: str | None, prefer=()):
  h5py = _import_h5py(path)
  with h5py.File(path, 'r') as f:
    key = _h5_key(f, path, key, prefer)
    ds = f[key]
    shape, dtype = ds.shape, ds.dtype
    offset = ds.id.get_offset() if ds.chunks is None and ds.compression is None else None
    if not mmap:
      return ds[()]
  if offset is not None and np.prod(shape) > 0:
    return np.memmap(path, dtype=dtype, mode='r', offset=offset, shape=shape)
  return H5Volume(path, key, shape, dtype)


def _load(path, mmap: bool, key: str | None, prefer=()):
  """The stored array of any supported format, with read failures turned into VolumeError."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise _fail(path, 'no such file or directory')
  suffix = _suffix(path)
  try:
    if os.path.isdir(path):
      return _load_slice_folder(path, mmap)
    if suffix == '.npy':
      return _load_npy(path, mmap)
    if suffix == '.npz':
      return _load_npz(path, mmap, key, prefer)
    if suffix in ('.tif', '.tiff'):
      return _load_tif(path, mmap)
    if suffix in ('.h5', '.hdf5'):
      return _load_h5(path, mmap, key, prefer)
  except VolumeError:
    raise
  except Exception as e:  # numpy, zipfile, tifffile and h5py each raise their own types for a bad file
    raise _fail(path, f'cannot read as {suffix or "a slice folder"}: {e}') from None
  raise _fail(path, f'unknown format {suffix!r}; use one of {", ".join(VOLUME_SUFFIXES)} or a folder of .tif slices')


# ---------------------------------------------------------------------------------------------------------
# Checks.


def _check_dtype(path, a):
  kind = np.dtype(a.dtype).kind
  if kind not in 'biuf':
    raise _fail(path, f'unsupported dtype {a.dtype}; volumes and flows must be numeric')


def _drop_lead(a, ndim: int):
  """Drops one leading singleton axis ((1, X0, X1, X2) volumes, as VolRAFT stores them)."""
  if len(a.shape) == ndim + 1 and a.shape[0] == 1:
    if isinstance(a, H5Volume):
      return H5Volume(a.path, a.key, a.shape[1:], a.dtype, lead=(0,))
    return a[0]
  return a


def check_finite(path, a, block_bytes: int = 8 << 20):
  """Raises VolumeError naming path if a holds NaN or inf; reads a lazy array in blocks along axis 0."""
  if np.dtype(a.dtype).kind != 'f':
    return
  row = max(1, int(np.prod(a.shape[1:])) * np.dtype(a.dtype).itemsize)
  step = max(1, block_bytes // row)
  for start in range(0, a.shape[0], step):
    block = np.asarray(a[start:start + step])
    if not np.isfinite(block).all():
      bad = tuple(int(i) for i in np.argwhere(~np.isfinite(block))[0])
      where = (bad[0] + start,) + bad[1:]
      raise _fail(path, f'holds a non-finite value ({block[bad]}) at index {where}')


def _check_volume(path, a):
  a = _drop_lead(a, 3)
  _check_dtype(path, a)
  if len(a.shape) != 3:
    raise _fail(path, f'expected a 3-D volume (X0, X1, X2), got shape {tuple(a.shape)}')
  if min(a.shape) == 0:
    raise _fail(path, f'is empty, shape {tuple(a.shape)}')
  return a


def _check_flow(path, a, shape=None):
  _check_dtype(path, a)
  if len(a.shape) != 4 or a.shape[0] != 3:
    raise _fail(path, f'expected a flow (3, X0, X1, X2), got shape {tuple(a.shape)}')
  if min(a.shape) == 0:
    raise _fail(path, f'is empty, shape {tuple(a.shape)}')
  if shape is not None and tuple(a.shape[1:]) != tuple(shape):
    raise _fail(path, f'flow grid {tuple(a.shape[1:])} does not match the volumes {tuple(shape)}')
  return a


# ---------------------------------------------------------------------------------------------------------
# Public readers.


def read_volume(path, mmap: bool = True, key: str | None = None, check: bool = True):
  """Reads a 3-D volume in its stored dtype; mmap=True maps or reads lazily where the format allows.

  key names the array of an .npz / dataset of an .h5 holding several. check scans for NaN/inf, in blocks;
  on a mapped file that is one pass over it, so pass check=False to defer it to the tiles you read.
  """
  a = _check_volume(path, _load(path, mmap, key))
  if check:
    check_finite(path, a)
  return a


def read_flow(path, mmap: bool = True, key: str | None = None, check: bool = True) -> np.ndarray:
  """Reads a flow (3, X0, X1, X2); float32 unless mapped, where the stored float dtype is kept."""
  a = _check_flow(path, _load(path, mmap, key, prefer=('flow',)))
  if check:
    check_finite(path, a)
  if not mmap or isinstance(a, (H5Volume, PlaneStack)):
    return np.asarray(a, np.float32)
  return a if a.dtype == np.float32 else np.asarray(a, np.float32)


def read_pair_files(vol0_path, vol1_path, flow_path=None, mmap: bool = True, check: bool = True):
  """Reads a reference and a deformed volume (and optionally a flow) that must share one grid."""
  vol0 = read_volume(vol0_path, mmap=mmap, check=check)
  vol1 = read_volume(vol1_path, mmap=mmap, check=check)
  if tuple(vol1.shape) != tuple(vol0.shape):
    raise _fail(vol1_path, f'shape {tuple(vol1.shape)} does not match {os.fspath(vol0_path)} {tuple(vol0.shape)}')
  if flow_path is None:
    return vol0, vol1
  flow = read_flow(flow_path, mmap=mmap, check=check)
  _check_flow(flow_path, flow, vol0.shape)
  return vol0, vol1, flow


def read_sample(path, check: bool = True) -> dict[str, Any]:
  """Reads a RAFT-DVC sample .npz: {'I1', 'I2': float32 (X0, X1, X2), 'flow': (3, ...), 'mask'?, 'metadata'}.

  metadata is the parsed JSON dict, or None when absent or stored as a pickle (never unpickled).
  """
  path = os.fspath(path)
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in ('I1', 'I2', 'flow') if k not in npz.files]
      if missing:
        raise _fail(path, f'is not a RAFT-DVC sample: no {", ".join(missing)} (has {", ".join(npz.files)})')
      arrays = {k: npz[k] for k in ('I1', 'I2', 'flow', 'mask') if k in npz.files}
      try:
        meta = npz['metadata'] if 'metadata' in npz.files else None
      except ValueError:  # an object array (a pickled dict, as older RAFT-DVC scripts saved): ignore it
        meta = None
  except VolumeError:
    raise
  except Exception as e:
    raise _fail(path, f'cannot read as .npz: {e}') from None
  sample = {}
  for k in ('I1', 'I2', 'mask'):
    if k in arrays:
      a = arrays[k]
      _check_dtype(f'{path}[{k}]', a)
      a = _drop_lead(a, 3)
      if a.ndim != 3:
        raise _fail(path, f'{k} must be 3-D (X0, X1, X2), got shape {a.shape}')
      sample[k] = a
  if sample['I1'].shape != sample['I2'].shape:
    raise _fail(path, f'I1 {sample["I1"].shape} and I2 {sample["I2"].shape} differ in shape')
  if 'mask' in sample and sample['mask'].shape != sample['I1'].shape:
    raise _fail(path, f'mask {sample["mask"].shape} and I1 {sample["I1"].shape} differ in shape')
  _check_flow(f'{path}[flow]', arrays['flow'], sample['I1'].shape)
  sample['I1'] = sample['I1'].astype(np.float32, copy=False)
  sample['I2'] = sample['I2'].astype(np.float32, copy=False)
  sample['flow'] = arrays['flow'].astype(np.float32, copy=False)
  if 'mask' in sample:
    sample['mask'] = sample['mask'].astype(np.float32, copy=False)
  if check:
    for k in ('I1', 'I2', 'flow'):
      check_finite(f'{path}[{k}]', sample[k])
  sample['metadata'] = _parse_metadata(path, meta)
  return sample


def _parse_metadata(path, meta):
  if meta is None:
    return None
  text = meta.item() if meta.shape == () else None
  if isinstance(text, bytes):
    text = text.decode('utf-8')
  if not isinstance(text, str):
    return None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise _fail(path, f'metadata is not JSON: {e}') from None


# ---------------------------------------------------------------------------------------------------------
# Writers.


_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps, so equal arrays give byte-identical files


def write_npz(path, arrays: Mapping[str, Any], compress: bool = False) -> None:
  """Writes arrays to an .npz readable with np.load(allow_pickle=False); deterministic bytes, atomic."""
  method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
  with atomic_path(path) as tmp, zipfile.ZipFile(tmp, 'w', compression=method, allowZip64=True) as zf:
    for name, value in arrays.items():
      value = np.asanyarray(value)
      if value.dtype.hasobject:
        raise ValueError(f'{os.fspath(path)}: array {name!r} holds Python objects; store JSON text instead')
      info = zipfile.ZipInfo(name + '.npy', date_time=_ZIP_EPOCH)
      info.compress_type = method
      info.external_attr = 0o644 << 16
      with zf.open(info, 'w', force_zip64=True) as f:
        np.lib.format.write_array(f, value, allow_pickle=False)


def _validated_volume(path, volume) -> np.ndarray:
  a = np.asarray(volume)
  _check_dtype(path, a)
  if a.ndim != 3 or min(a.shape) == 0:
    raise _fail(path, f'a volume to write must be non-empty 3-D (X0, X1, X2), got shape {a.shape}')
  check_finite(path, a)
  return a


def write_volume(path, volume, key: str = 'volume', compress: bool = False) -> None:
  """Writes a 3-D volume as .npy, .npz, .tif/.tiff, .h5/.hdf5, or (a path without suffix) a folder of slices."""
  a = _validated_volume(path, volume)
  suffix = _suffix(path)
  if suffix == '':
    with atomic_path(path) as tmp:
      os.makedirs(tmp)
      width = max(5, len(str(a.shape[0] - 1)))
      for i in range(a.shape[0]):
        tifffile.imwrite(os.path.join(tmp, f'slice_{i:0{width}d}.tif'), a[i], photometric='minisblack')
    return
  _write_array(path, a, key, compress)


def write_flow(path, flow, key: str = 'flow', compress: bool = False) -> None:
  """Writes a flow (3, X0, X1, X2) as float32 .npy, .npz (member 'flow'), .tif/.tiff (4-D stack) or .h5."""
  a = np.asarray(flow)
  _check_flow(path, a)
  if np.dtype(a.dtype).kind != 'f':
    raise _fail(path, f'a flow must be floating point, got {a.dtype}')
  check_finite(path, a)
  _write_array(path, a.astype(np.float32, copy=False), key, compress)


def _write_array(path, a: np.ndarray, key: str, compress: bool) -> None:
  suffix = _suffix(path)
  if suffix == '.npy':
    with atomic_path(path) as tmp:
      np.save(tmp, a, allow_pickle=False)
  elif suffix == '.npz':
    write_npz(path, {key: a}, compress)
  elif suffix in ('.tif', '.tiff'):
    with atomic_path(path) as tmp:
      tifffile.imwrite(tmp, a, photometric='minisblack', compression='zlib' if compress else None)
  elif suffix in ('.h5', '.hdf5'):
    h5py = _import_h5py(path)
    with atomic_path(path) as tmp, h5py.File(tmp, 'w') as f:
      f.create_dataset(key, data=a, compression='gzip' if compress else None)
  else:
    raise _fail(path, f'cannot write {suffix!r}; use one of {", ".join(VOLUME_SUFFIXES)}')


def write_sample(path, I1, I2, flow, metadata: Mapping[str, Any] | str | None = None, mask=None,  # pylint: disable=invalid-name
                 compress: bool = False) -> None:
  """Writes a RAFT-DVC sample .npz (I1, I2 float32, flow float32, metadata as a JSON string); atomic."""
  vols = {'I1': _validated_volume(f'{path}[I1]', I1), 'I2': _validated_volume(f'{path}[I2]', I2)}
  if vols['I1'].shape != vols['I2'].shape:
    raise _fail(path, f'I1 {vols["I1"].shape} and I2 {vols["I2"].shape} differ in shape')
  f = np.asarray(flow)
  _check_flow(f'{path}[flow]', f, vols['I1'].shape)
  check_finite(f'{path}[flow]', f)
  arrays = {k: v.astype(np.float32, copy=False) for k, v in vols.items()}
  arrays['flow'] = f.astype(np.float32, copy=False)
  if mask is not None:
    m = _validated_volume(f'{path}[mask]', mask)
    if m.shape != vols['I1'].shape:
      raise _fail(path, f'mask {m.shape} and I1 {vols["I1"].shape} differ in shape')
    arrays['mask'] = m
  if metadata is not None:
    text = metadata if isinstance(metadata, str) else json.dumps(metadata, sort_keys=True)
    arrays['metadata'] = np.array(text)
  write_npz(path, arrays, compress)
