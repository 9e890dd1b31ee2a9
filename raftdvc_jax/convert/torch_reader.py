"""Reads PyTorch checkpoints (.pt/.pth) without torch and without running code.

Two on-disk layouts are understood:

* the zip layout written by ``torch.save`` since torch 1.6: ``<root>/data.pkl``
  holds the object pickle, every tensor storage is a raw record
  ``<root>/data/<key>``, and ``<root>/byteorder`` says how those records are
  encoded (``little`` when the record is absent);
* the legacy stream written with ``_use_new_zipfile_serialization=False``:
  five consecutive pickles (magic number, protocol version, system info, the
  object, the list of storage keys), then each storage as an 8-byte
  little-endian element count followed by its little-endian elements.

The object pickle is read by a restricted unpickler. Its ``find_class`` never
imports anything: it looks the requested global up in a fixed table of local,
side-effect-free stand-ins (``_ALLOWED_GLOBALS``) and refuses everything else
with :class:`CheckpointError`. Tensors come back as C-contiguous numpy copies;
torch dtypes, devices and sizes come back as numpy dtypes, strings and tuples.

This keeps hostile files from executing code; it does not make their
contents trustworthy. Convert untrusted checkpoints once and ship the
converted arrays rather than the .pth files.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import re
import zipfile
from typing import Any, BinaryIO, Callable

import numpy as np

try:  # bfloat16/float8 tensors need ml_dtypes; everything else works without.
  import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is a declared dependency.
  ml_dtypes = None

__all__ = ['CheckpointError', 'load']


class CheckpointError(ValueError):
  """A checkpoint file is malformed, truncated, unsupported or hostile."""


class _FormatError(Exception):
  """Internal: a problem with the file; `load` prefixes the file name."""


# torch.save's legacy stream starts with these two pickled integers.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# A broadcast (stride-0) view over a tiny storage would otherwise let a few
# bytes of file demand unbounded memory when copied out.
_MAX_EXPANDED_BYTES = 1 << 30


def _clip(text: Any, limit: int = 200) -> str:
  """One-line, length-bounded rendering of file-controlled text."""
  s = text if isinstance(text, str) else repr(text)
  s = s.encode('unicode_escape').decode('ascii')
  return s if len(s) <= limit else s[:limit] + '...'


# ---------------------------------------------------------------------------
# dtypes


def _ml_dtype(name: str) -> np.dtype | None:
  if ml_dtypes is None or not hasattr(ml_dtypes, name):
    return None
  return np.dtype(getattr(ml_dtypes, name))


# Canonical torch dtype names (what `torch.<dtype>` pickles as) -> numpy.
_TORCH_DTYPES: dict[str, np.dtype | None] = {
    'float64': np.dtype(np.float64),
    'float32': np.dtype(np.float32),
    'float16': np.dtype(np.float16),
    'bfloat16': _ml_dtype('bfloat16'),
    'complex128': np.dtype(np.complex128),
    'complex64': np.dtype(np.complex64),
    'int64': np.dtype(np.int64),
    'int32': np.dtype(np.int32),
    'int16': np.dtype(np.int16),
    'int8': np.dtype(np.int8),
    'uint64': np.dtype(np.uint64),
    'uint32': np.dtype(np.uint32),
    'uint16': np.dtype(np.uint16),
    'uint8': np.dtype(np.uint8),
    'bool': np.dtype(np.bool_),
    'float8_e5m2': _ml_dtype('float8_e5m2'),
    'float8_e4m3fn': _ml_dtype('float8_e4m3fn'),
    'float8_e5m2fnuz': _ml_dtype('float8_e5m2fnuz'),
    'float8_e4m3fnuz': _ml_dtype('float8_e4m3fnuz'),
    'float8_e8m0fnu': _ml_dtype('float8_e8m0fnu'),
}

# Legacy typed-storage class names (`torch.FloatStorage`, ...) -> torch dtype.
_STORAGE_TYPES = {
    'DoubleStorage': 'float64',
    'FloatStorage': 'float32',
    'HalfStorage': 'float16',
    'BFloat16Storage': 'bfloat16',
    'ComplexDoubleStorage': 'complex128',
    'ComplexFloatStorage': 'complex64',
    'LongStorage': 'int64',
    'IntStorage': 'int32',
    'ShortStorage': 'int16',
    'CharStorage': 'int8',
    'ByteStorage': 'uint8',
    'BoolStorage': 'bool',
}


def _torch_dtype(name: str) -> np.dtype:
  dtype = _TORCH_DTYPES.get(name)
  if dtype is None:
    raise _FormatError(f'dtype torch.{_clip(name)} is not supported by the '
                       'installed ml_dtypes')
  return dtype


# ---------------------------------------------------------------------------
# Local stand-ins for the allowed globals. Every one only stores or validates
# data; none reaches a real torch/numpy/builtin callable named by the file.


class _Global:
  """Frozen stand-in for one allowlisted global.

  Values handed to the pickle machine must not be mutable through BUILD
  (which would call setattr on them and could poison the shared allowlist for
  later loads), and must not be types (NEWOBJ would call their __new__).
  """

  __slots__ = ('qualname', 'kind', 'payload')

  def __init__(self, qualname: str, kind: str, payload: Any = None):
    object.__setattr__(self, 'qualname', qualname)
    object.__setattr__(self, 'kind', kind)
    object.__setattr__(self, 'payload', payload)

  def __setattr__(self, name, value):
    raise _FormatError(f'pickle tried to modify {self.qualname}')

  def __delattr__(self, name):
    raise _FormatError(f'pickle tried to modify {self.qualname}')

  def __setstate__(self, state):
    raise _FormatError(f'pickle tried to modify {self.qualname}')

  def __call__(self, *args):
    if self.kind != 'function':
      raise _FormatError(f'{self.qualname} cannot be called in a checkpoint')
    return self.payload(*args)

  def __repr__(self) -> str:
    return f'<{self.qualname}>'

  def __reduce__(self):  # Re-pickling a result must not reference this module.
    return (str, (self.qualname,))


_TENSOR_TYPE = _Global('torch.Tensor', 'type')
_PARAMETER_TYPE = _Global('torch.nn.parameter.Parameter', 'type')
_NDARRAY_TYPE = _Global('numpy.ndarray', 'type')


class _StorageRef:
  """A storage named by a persistent id; its bytes are attached later."""

  __slots__ = ('key', 'dtype', 'numel', 'view_offset', 'view_numel')

  def __init__(self, key, dtype, numel, view_offset=0, view_numel=None):
    self.key = key
    self.dtype = dtype
    self.numel = numel
    self.view_offset = view_offset
    self.view_numel = numel if view_numel is None else view_numel

  def __setstate__(self, state):
    raise _FormatError('pickle tried to modify a storage')


class _TensorStub:
  """A tensor waiting for its storage bytes (legacy files put them last)."""

  __slots__ = ('storage', 'offset', 'size', 'stride', 'dtype', 'metadata')

  def __init__(self, storage, offset, size, stride, dtype, metadata):
    self.storage = storage
    self.offset = offset
    self.size = size
    self.stride = stride
    self.dtype = dtype
    self.metadata = metadata

  def __setstate__(self, state):
    raise _FormatError('pickle tried to modify a tensor')


def _check_index(value, what: str) -> int:
  # bool is an int subclass but never a valid size/stride/offset.
  if type(value) is not int or value < 0:
    raise _FormatError(f'invalid tensor {what}: {_clip(value)}')
  return value


def _check_shape(values, what: str) -> tuple[int, ...]:
  if not isinstance(values, (tuple, list)) or len(values) > 64:
    raise _FormatError(f'invalid tensor {what}: {_clip(values)}')
  return tuple(_check_index(v, what) for v in values)


def _make_tensor(storage, storage_offset, size, stride, dtype=None,
                 metadata=None) -> _TensorStub:
  if not isinstance(storage, _StorageRef):
    raise _FormatError(
        f'tensor rebuilt from a non-storage object ({type(storage).__name__})')
  size = _check_shape(size, 'size')
  stride = _check_shape(stride, 'stride')
  if len(size) != len(stride):
    raise _FormatError(f'tensor size {size} and stride {stride} differ in rank')
  if metadata is not None:
    if not isinstance(metadata, dict) or not set(metadata) <= {'conj', 'neg'}:
      raise _FormatError(f'unsupported tensor metadata {_clip(metadata)}')
  return _TensorStub(storage, _check_index(storage_offset, 'storage offset'),
                     size, stride, dtype, metadata or None)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, metadata=None):
  del requires_grad, backward_hooks  # Training-time state; no numpy analogue.
  return _make_tensor(storage, storage_offset, size, stride, None, metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  # v3 tensors (uint16/32/64, float8, ...) sit on an untyped byte storage and
  # carry their dtype explicitly; offsets and strides count that dtype.
  del requires_grad, backward_hooks
  if not isinstance(dtype, _Global) or dtype.kind != 'dtype':
    raise _FormatError(f'invalid tensor dtype {_clip(dtype)}')
  return _make_tensor(storage, storage_offset, size, stride,
                      _torch_dtype(dtype.payload), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
  del requires_grad, backward_hooks
  if not isinstance(data, _TensorStub):
    raise _FormatError('parameter rebuilt from a non-tensor object')
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del state  # Python attributes set on the Parameter; not tensor data.
  return _rebuild_parameter(data, requires_grad, backward_hooks)


_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
                      _rebuild_parameter, _rebuild_parameter_with_state)


def _rebuild_from_type_v2(func, new_type, args, state):
  # torch uses this for tensors carrying Python attributes; only plain
  # Tensor/Parameter types are accepted, and `func` must be one of ours.
  del state
  if not isinstance(func, _Global) or func.payload not in _TENSOR_REBUILDERS:
    raise _FormatError('tensor rebuilt through an unexpected function')
  if new_type is not _TENSOR_TYPE and new_type is not _PARAMETER_TYPE:
    raise _FormatError(f'unsupported tensor subclass {_clip(new_type)}')
  if not isinstance(args, tuple):
    raise _FormatError('malformed tensor arguments')
  return func(*args)


class _PickledOrderedDict(collections.OrderedDict):
  """Receives `collections.OrderedDict` pickles, including their attributes.

  torch state dicts carry a `_metadata` attribute, which arrives through the
  BUILD opcode; it is kept and re-attached to a plain OrderedDict at the end.
  """

  def __setstate__(self, state):
    if not isinstance(state, dict) or not all(
        isinstance(k, str) for k in state):
      raise _FormatError('malformed OrderedDict state')
    self.__dict__['_pickled_attrs'] = dict(state)


def _ordered_dict(items=()):
  if not isinstance(items, (list, tuple)):
    raise _FormatError('malformed OrderedDict arguments')
  out = _PickledOrderedDict()
  for item in items:
    if not isinstance(item, (list, tuple)) or len(item) != 2:
      raise _FormatError('malformed OrderedDict item')
    out[item[0]] = item[1]
  return out


def _plain_iterable(items, what: str):
  if not isinstance(items, (list, tuple, set, frozenset)):
    raise _FormatError(f'malformed {what} arguments')
  return items


def _make_set(items=()):
  return set(_plain_iterable(items, 'set'))


def _make_frozenset(items=()):
  return frozenset(_plain_iterable(items, 'frozenset'))


# numpy passes bytes through `_codecs.encode(text, 'latin1')` under pickle
# protocol 2; only text codecs are honoured (no zlib/base64 codec tricks).
_TEXT_CODECS = frozenset(
    {'latin1', 'latin-1', 'iso-8859-1', 'iso8859-1', 'utf-8', 'utf8', 'ascii'})


def _codecs_encode(text, encoding='utf-8', errors='strict'):
  if (not isinstance(text, str) or not isinstance(encoding, str) or
      encoding.lower() not in _TEXT_CODECS or errors != 'strict'):
    raise _FormatError('unsupported _codecs.encode call')
  return text.encode(encoding.lower())


def _make_bytes(*args):
  if not args:
    return b''
  if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
    return bytes(args[0])
  raise _FormatError('unsupported bytes() call')


def _make_bytearray(*args):
  if not args:
    return bytearray()
  if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
    return bytearray(args[0])
  if len(args) == 2 and isinstance(args[0], str):
    return bytearray(_codecs_encode(args[0], args[1]))
  raise _FormatError('unsupported bytearray() call')


def _make_complex(real=0.0, imag=0.0):
  if not all(type(v) in (int, float) for v in (real, imag)):
    raise _FormatError('unsupported complex() call')
  return complex(real, imag)


def _torch_size(dims=()):
  if not isinstance(dims, (tuple, list)) or not all(
      type(d) is int for d in dims):
    raise _FormatError('malformed torch.Size')
  return tuple(dims)


def _torch_device(kind, index=None):
  # torch.device('cuda', 0) -> 'cuda:0': location strings only, never devices.
  if not isinstance(kind, str) or not (index is None or type(index) is int):
    raise _FormatError('malformed torch.device')
  return kind if index is None else f'{kind}:{index}'


# numpy dtypes: spec string -> kinds with a plain, fixed binary layout.
_PLAIN_NUMPY_KINDS = frozenset('biufcSU')
_DTYPE_SPEC = re.compile(r'[biufcSU?][0-9]{0,6}')


class _DTypeStub:
  """Receives `numpy.dtype(spec, align, copy)` plus its BUILD state."""

  __slots__ = ('dtype',)

  def __init__(self, spec, align=False, copy=False):
    del align, copy
    # Only short type codes ('f8', 'i4', 'b1', 'U3', ...) reach np.dtype, so
    # none of its richer string syntaxes are exposed to the file.
    if not isinstance(spec, str) or not _DTYPE_SPEC.fullmatch(spec):
      raise _FormatError(f'numpy dtype {_clip(spec)} is not allowed '
                         '(only bool/int/uint/float/complex/bytes/str)')
    self.dtype = _check_plain_dtype(np.dtype(spec))

  def __setstate__(self, state):
    # (version, byteorder, subarray, names, fields, elsize, alignment, flags
    # [, metadata]); only simple scalar dtypes are accepted.
    if (not isinstance(state, tuple) or len(state) not in (8, 9) or
        state[2:5] != (None, None, None)):
      raise _FormatError('unsupported numpy dtype state (structured dtype?)')
    byteorder, elsize = state[1], state[5]
    if byteorder not in ('<', '>', '|', '=') or type(elsize) is not int:
      raise _FormatError('malformed numpy dtype state')
    dtype = self.dtype
    if dtype.kind in 'SU' and elsize > 0 and dtype.itemsize != elsize:
      char_bytes = 4 if dtype.kind == 'U' else 1
      dtype = np.dtype(f'{dtype.kind}{elsize // char_bytes}')
    if byteorder in '<>' and dtype.itemsize > 1:
      dtype = dtype.newbyteorder(byteorder)
      if dtype.isnative:  # '<f8' on a little-endian host is just float64.
        dtype = dtype.newbyteorder('=')
    self.dtype = dtype


def _check_plain_dtype(dtype: np.dtype) -> np.dtype:
  if (dtype.kind not in _PLAIN_NUMPY_KINDS or dtype.fields is not None or
      dtype.subdtype is not None or dtype.hasobject):
    raise _FormatError(f'numpy dtype {_clip(str(dtype))} is not allowed '
                       '(only bool/int/uint/float/complex/bytes/str)')
  return dtype


def _resolve_dtype(dtype) -> np.dtype:
  if not isinstance(dtype, _DTypeStub):
    raise _FormatError(f'numpy data with an invalid dtype {_clip(dtype)}')
  return dtype.dtype


def _array_from_bytes(data, dtype: np.dtype, shape, order: str) -> np.ndarray:
  if isinstance(data, (list, tuple)):
    raise _FormatError('numpy object arrays are not allowed')
  if not isinstance(data, (bytes, bytearray)):
    raise _FormatError('numpy array data is not a byte string')
  shape = tuple(_check_index(n, 'numpy shape') for n in shape)
  count = math.prod(shape)
  if len(data) != count * dtype.itemsize:
    raise _FormatError(f'numpy array data has {len(data)} bytes, expected '
                       f'{count * dtype.itemsize} for {shape} {dtype}')
  if count == 0:
    return np.zeros(shape, dtype)
  flat = np.frombuffer(data, dtype=dtype, count=count)
  return np.array(flat.reshape(shape, order=order), order='C', copy=True)


class _ArrayStub:
  """Receives `numpy.core.multiarray._reconstruct(...)` plus its BUILD state."""

  __slots__ = ('array',)

  def __init__(self, array=None):
    self.array = array

  def __setstate__(self, state):
    if self.array is not None:
      raise _FormatError('pickle tried to modify a numpy array twice')
    if not isinstance(state, tuple):
      raise _FormatError('malformed numpy array state')
    if len(state) == 5:  # (version, shape, dtype, is_fortran, data)
      state = state[1:]
    if len(state) != 4 or not isinstance(state[0], tuple):
      raise _FormatError('malformed numpy array state')
    shape, dtype, fortran, data = state
    array = _array_from_bytes(data, _resolve_dtype(dtype), shape,
                              'F' if fortran else 'C')
    if not array.dtype.isnative:
      # numpy's own __setstate__ converts to native byte order (unlike the
      # protocol-5 _frombuffer path, which keeps it); do the same.
      array = array.astype(array.dtype.newbyteorder('='))
    self.array = array


def _np_reconstruct(subtype, shape, typecode):
  # numpy calls this with (ndarray, (0,), b'b') and sends the data via BUILD;
  # ndarray subclasses (matrix, masked arrays, ...) are not accepted.
  del shape, typecode
  if subtype is not _NDARRAY_TYPE:
    raise _FormatError(f'unsupported array type {_clip(subtype)}')
  return _ArrayStub()


def _np_frombuffer(data, dtype, shape, order):
  # Pickle protocol 5 form of numpy arrays.
  if order not in ('C', 'F') or not isinstance(shape, tuple):
    raise _FormatError('malformed numpy buffer arguments')
  return _ArrayStub(_array_from_bytes(data, _resolve_dtype(dtype), shape,
                                      order))


def _np_scalar(dtype, data=None):
  dtype = _resolve_dtype(dtype)
  if not isinstance(data, bytes) or len(data) != dtype.itemsize:
    raise _FormatError('malformed numpy scalar')
  return np.frombuffer(data, dtype=dtype, count=1)[0]


def _build_allowlist() -> dict[tuple[str, str], _Global]:
  """(module, name) -> local stand-in; the complete set of usable globals."""
  functions: dict[tuple[str, str], Callable[..., Any]] = {}
  for name, fn in [('_rebuild_tensor', _rebuild_tensor),
                   ('_rebuild_tensor_v2', _rebuild_tensor_v2),
                   ('_rebuild_tensor_v3', _rebuild_tensor_v3),
                   ('_rebuild_parameter', _rebuild_parameter),
                   ('_rebuild_parameter_with_state',
                    _rebuild_parameter_with_state)]:
    functions['torch._utils', name] = fn
  functions['torch._tensor', '_rebuild_from_type_v2'] = _rebuild_from_type_v2
  functions['torch', 'Size'] = _torch_size
  functions['torch', 'device'] = _torch_device
  functions['collections', 'OrderedDict'] = _ordered_dict
  # Protocol 2 writes Python 3 builtins under their Python 2 module name.
  for module in ('builtins', '__builtin__'):
    functions[module, 'set'] = _make_set
    functions[module, 'frozenset'] = _make_frozenset
    functions[module, 'bytes'] = _make_bytes
    functions[module, 'bytearray'] = _make_bytearray
    functions[module, 'complex'] = _make_complex
  functions['_codecs', 'encode'] = _codecs_encode
  functions['numpy', 'dtype'] = _DTypeStub
  for core in ('numpy.core', 'numpy._core'):  # numpy 1.x / 2.x module names
    functions[f'{core}.multiarray', '_reconstruct'] = _np_reconstruct
    functions[f'{core}.multiarray', 'scalar'] = _np_scalar
    functions[f'{core}.numeric', '_frombuffer'] = _np_frombuffer
  table = {key: _Global('.'.join(key), 'function', fn)
           for key, fn in functions.items()}

  table['torch', 'Tensor'] = _TENSOR_TYPE
  table['torch.nn.parameter', 'Parameter'] = _PARAMETER_TYPE
  table['numpy', 'ndarray'] = _NDARRAY_TYPE
  for cls, dtype_name in _STORAGE_TYPES.items():
    # Old legacy files name CUDA storages by their torch.cuda class.
    for module in ('torch', 'torch.cuda'):
      table[module, cls] = _Global(f'{module}.{cls}', 'storage', dtype_name)
  for module in ('torch', 'torch.storage'):
    table[module, 'UntypedStorage'] = _Global(f'{module}.UntypedStorage',
                                              'storage', 'uint8')
  # `torch.float32` etc. appear as values and as the dtype of v3 tensors.
  for name in _TORCH_DTYPES:
    table['torch', name] = _Global(f'torch.{name}', 'dtype', name)
  return table


_ALLOWED_GLOBALS = _build_allowlist()


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler whose globals come only from `_ALLOWED_GLOBALS`."""

  def __init__(self, file: BinaryIO,
               persistent_load: Callable[[Any], Any] | None = None):
    super().__init__(file, encoding='utf-8')
    self._persistent = persistent_load

  def find_class(self, module, name):
    # No import, no getattr: an unknown pair is refused before anything
    # named by the file is touched.
    target = _ALLOWED_GLOBALS.get((module, name))
    if target is None:
      raise _FormatError(
          f'refused global {_clip(f"{module}.{name}")} '
          '(not on the checkpoint allowlist; the file may be malicious or '
          'store arbitrary Python objects)')
    return target

  def persistent_load(self, pid):
    if self._persistent is None:
      raise _FormatError('unexpected persistent id in header pickle')
    return self._persistent(pid)


def _unpickle(stream: BinaryIO, persistent_load=None) -> Any:
  return _RestrictedUnpickler(stream, persistent_load).load()


# ---------------------------------------------------------------------------
# Storages and tensor materialisation


class _Storages:
  """Storage references seen in the pickle, and their bytes once read."""

  def __init__(self):
    self.refs: dict[str, _StorageRef] = {}
    self.data: dict[str, memoryview] = {}
    self.big_endian = False

  def _storage_dtype(self, storage_type) -> np.dtype:
    if not isinstance(storage_type, _Global) or storage_type.kind != 'storage':
      raise _FormatError(f'invalid storage type {_clip(storage_type)}')
    return _torch_dtype(storage_type.payload)

  def _register(self, storage_type, key, location, numel) -> _StorageRef:
    if isinstance(key, int) and type(key) is not bool:
      key = str(key)
    if not isinstance(key, str) or not isinstance(location, (str, bytes)):
      raise _FormatError(f'malformed storage key {_clip(key)}')
    numel = _check_index(numel, 'storage size')
    dtype = self._storage_dtype(storage_type)
    ref = self.refs.get(key)
    if ref is None:
      ref = self.refs[key] = _StorageRef(key, dtype, numel)
    elif ref.dtype != dtype or ref.numel != numel:
      raise _FormatError(f'storage {key!r} is declared twice differently')
    return ref

  def zip_pid(self, pid) -> _StorageRef:
    # ('storage', storage_type, key, location, numel)
    if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != 'storage':
      raise _FormatError(f'unsupported persistent id {_clip(pid)}')
    return self._register(*pid[1:])

  def legacy_pid(self, pid) -> _StorageRef:
    # ('storage', storage_type, root_key, location, root_numel, view) where
    # view is None or (view_key, element_offset, view_numel).
    if not isinstance(pid, tuple) or not pid:
      raise _FormatError(f'unsupported persistent id {_clip(pid)}')
    kind = pid[0].decode('ascii') if isinstance(pid[0], bytes) else pid[0]
    if kind == 'module':
      raise _FormatError('pickled nn.Module objects are not supported; '
                         'save a state_dict instead')
    if kind != 'storage' or len(pid) != 6:
      raise _FormatError(f'unsupported persistent id {_clip(pid)}')
    root = self._register(*pid[1:5])
    view = pid[5]
    if view is None:
      return root
    if not isinstance(view, tuple) or len(view) != 3:
      raise _FormatError(f'malformed storage view {_clip(view)}')
    offset = _check_index(view[1], 'storage view offset')
    numel = _check_index(view[2], 'storage view size')
    if offset + numel > root.numel:
      raise _FormatError(f'storage view {_clip(view[0])} exceeds its root')
    return _StorageRef(root.key, root.dtype, root.numel, offset, numel)

  def storage_bytes(self, ref: _StorageRef) -> memoryview:
    data = self.data.get(ref.key)
    if data is None:
      raise _FormatError(f'no data for storage {ref.key!r}')
    itemsize = ref.dtype.itemsize
    start = ref.view_offset * itemsize
    return data[start:start + ref.view_numel * itemsize]

  def tensor(self, stub: _TensorStub) -> np.ndarray:
    """Copies one tensor out of its storage, checking its extent first."""
    ref = stub.storage
    dtype = stub.dtype if stub.dtype is not None else ref.dtype
    raw = self.storage_bytes(ref)
    available = len(raw) // dtype.itemsize
    count = math.prod(stub.size)
    if count == 0:
      out = np.zeros(stub.size, dtype)
    else:
      extent = stub.offset + 1 + sum(
          (n - 1) * s for n, s in zip(stub.size, stub.stride))
      if extent > available:
        raise _FormatError(
            f'storage {ref.key!r} is too small for a tensor of size '
            f'{stub.size}, stride {stub.stride}, offset {stub.offset}: '
            f'needs {extent} elements, has {available}')
      nbytes = count * dtype.itemsize
      if nbytes > max(len(raw), _MAX_EXPANDED_BYTES):
        raise _FormatError(f'tensor of size {stub.size} would expand '
                           f'{len(raw)} storage bytes to {nbytes}')
      # ndarray(buffer=...) rather than as_strided: the latter goes through
      # the array interface, which cannot spell ml_dtypes' float8 types.
      view = np.ndarray(stub.size, dtype, buffer=raw,
                        offset=stub.offset * dtype.itemsize,
                        strides=tuple(s * dtype.itemsize for s in stub.stride))
      out = np.array(view, order='C', copy=True)
      if self.big_endian:
        _byteswap_inplace(out)
    if stub.metadata:
      # Lazy conj/neg bits: the stored values are pre-conjugation/negation.
      if stub.metadata.get('conj'):
        out = np.conj(out)
      if stub.metadata.get('neg'):
        out = np.negative(out)
    return out

  def storage_array(self, ref: _StorageRef) -> np.ndarray:
    """A bare storage saved as an object becomes a 1-D array."""
    out = np.frombuffer(self.storage_bytes(ref), dtype=ref.dtype).copy()
    if self.big_endian:
      _byteswap_inplace(out)
    return out


def _byteswap_inplace(arr: np.ndarray) -> None:
  # Swap per scalar component (complex = two floats). Done on unsigned views
  # because ml_dtypes types lose their identity under newbyteorder().
  part = arr.dtype.itemsize // (2 if arr.dtype.kind == 'c' else 1)
  if part > 1 and arr.size:
    arr.reshape(-1).view(np.dtype(f'u{part}')).byteswap(inplace=True)


def _finalize(obj: Any, storages: _Storages, memo: dict[int, Any]) -> Any:
  """Replaces stand-ins in the unpickled tree with numpy/plain objects."""
  key = id(obj)
  if key in memo:
    return memo[key]
  kind = type(obj)
  if kind in (str, int, float, bool, bytes, complex, type(None)) or isinstance(
      obj, (np.ndarray, np.generic, np.dtype)):
    return obj
  if kind is list:
    memo[key] = obj  # Mutated in place so self-references stay intact.
    obj[:] = [_finalize(v, storages, memo) for v in obj]
    return obj
  if kind is dict:
    memo[key] = obj
    items = [(_finalize(k, storages, memo), _finalize(v, storages, memo))
             for k, v in obj.items()]
    obj.clear()
    obj.update(items)
    return obj
  if kind is _PickledOrderedDict:
    out = collections.OrderedDict()
    memo[key] = out
    for k, v in obj.items():
      out[_finalize(k, storages, memo)] = _finalize(v, storages, memo)
    attrs = obj.__dict__.get('_pickled_attrs', {})
    if '_metadata' in attrs:  # torch keeps module versions here.
      out._metadata = _finalize(attrs['_metadata'], storages, memo)
    return out
  if kind is tuple:
    out = tuple(_finalize(v, storages, memo) for v in obj)
  elif kind is set or kind is frozenset:
    out = kind(_finalize(v, storages, memo) for v in obj)
  elif kind is bytearray:
    out = obj
  elif kind is _TensorStub:
    out = storages.tensor(obj)
  elif kind is _StorageRef:
    out = storages.storage_array(obj)
  elif kind is _ArrayStub:
    if obj.array is None:
      raise _FormatError('numpy array without data')
    out = obj.array
  elif kind is _DTypeStub:
    out = obj.dtype
  elif kind is _Global:
    # torch dtypes become numpy dtypes; other bare globals their name.
    out = _torch_dtype(obj.payload) if obj.kind == 'dtype' else obj.qualname
  else:
    raise _FormatError(f'unexpected object of type {kind.__name__}')
  memo[key] = out
  return out


# ---------------------------------------------------------------------------
# Containers


def _load_zip(stream: BinaryIO) -> Any:
  try:
    archive = zipfile.ZipFile(stream)
  except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
    raise _FormatError(
        f'corrupt or truncated zip archive ({_clip(str(e))})') from None
  with archive:
    names = archive.namelist()
    pickles = [n for n in names
               if n.endswith('/data.pkl') and n.count('/') == 1]
    if not pickles:
      if any(n.endswith('/constants.pkl') for n in names):
        raise _FormatError('TorchScript archive (torch.jit.save) is not a '
                           'torch.save checkpoint')
      raise _FormatError('zip archive has no <root>/data.pkl record; not a '
                         'torch.save checkpoint')
    root = pickles[0][:-len('data.pkl')]
    if any(n.startswith(root + 'code/') for n in names):
      raise _FormatError('TorchScript archive (torch.jit.save) is not a '
                         'torch.save checkpoint')
    storages = _Storages()
    if root + 'byteorder' in names:
      order = archive.read(root + 'byteorder')
      if order not in (b'little', b'big'):
        raise _FormatError(f'unknown byteorder record {_clip(order)}')
      storages.big_endian = order == b'big'
    obj = _unpickle(io.BytesIO(archive.read(root + 'data.pkl')),
                    storages.zip_pid)
    for ref in storages.refs.values():
      name = f'{root}data/{ref.key}'
      try:
        info = archive.getinfo(name)
      except KeyError:
        raise _FormatError(f'missing storage record {name!r}') from None
      nbytes = ref.numel * ref.dtype.itemsize
      if info.file_size < nbytes:
        raise _FormatError(f'storage record {name!r} has {info.file_size} '
                           f'bytes, expected {nbytes}')
      with archive.open(info) as member:
        data = member.read(nbytes)
      if len(data) != nbytes:
        raise _FormatError(f'storage record {name!r} is truncated')
      storages.data[ref.key] = memoryview(data)
    return _finalize(obj, storages, {})


def _load_legacy(stream: BinaryIO, size: int) -> Any:
  magic = _unpickle(stream)
  if type(magic) is not int or magic != _LEGACY_MAGIC:
    raise _FormatError('not a PyTorch checkpoint (bad magic number)')
  protocol = _unpickle(stream)
  if protocol != _LEGACY_PROTOCOL:
    raise _FormatError(f'unsupported legacy protocol version {_clip(protocol)}')
  sys_info = _unpickle(stream)
  if not isinstance(sys_info, dict):
    raise _FormatError('malformed system-info record')
  storages = _Storages()
  obj = _unpickle(stream, storages.legacy_pid)
  keys = _unpickle(stream)
  if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
    raise _FormatError('malformed storage key list')
  for key in keys:
    ref = storages.refs.get(key)
    if ref is None:
      raise _FormatError(f'storage {key!r} is listed but never used')
    header = stream.read(8)
    if len(header) != 8:
      raise _FormatError(f'truncated before storage {key!r}')
    numel = int.from_bytes(header, 'little', signed=True)
    if numel < ref.numel:
      raise _FormatError(f'storage {key!r} holds {numel} elements, '
                         f'expected {ref.numel}')
    nbytes = numel * ref.dtype.itemsize
    # Check against the file size first: a forged count must not make us
    # allocate a huge buffer.
    if nbytes > size - stream.tell():
      raise _FormatError(f'truncated inside storage {key!r}')
    data = stream.read(nbytes)
    if len(data) != nbytes:
      raise _FormatError(f'truncated inside storage {key!r}')
    storages.data[key] = memoryview(data)
  missing = set(storages.refs) - set(keys)
  if missing:
    raise _FormatError(f'missing data for storage {sorted(missing)[0]!r}')
  return _finalize(obj, storages, {})


def _load_stream(stream: BinaryIO) -> Any:
  stream.seek(0, os.SEEK_END)
  size = stream.tell()
  stream.seek(0)
  if size == 0:
    raise _FormatError('empty file')
  head = stream.read(512)
  stream.seek(0)
  if head.startswith(b'PK'):
    return _load_zip(stream)
  if head[:1] == b'\x80':  # PROTO opcode: a pickle stream of protocol >= 2.
    return _load_legacy(stream, size)
  if head[257:262] == b'ustar':
    raise _FormatError('tar-based checkpoint (torch <= 0.3) is not supported')
  raise _FormatError('not a PyTorch checkpoint (neither a zip archive nor a '
                     f'pickle stream; starts with {_clip(head[:8])})')


def load(path: str | os.PathLike | BinaryIO) -> Any:
  """Loads a torch.save checkpoint; tensors become numpy arrays."""
  if hasattr(path, 'read'):
    label = str(getattr(path, 'name', '<stream>'))
    raw = path.read()
    if not isinstance(raw, (bytes, bytearray)):
      raise CheckpointError(f'{label}: not a binary stream')
    stream: BinaryIO = io.BytesIO(raw)
  else:
    label = os.fsdecode(path)
    stream = open(path, 'rb')  # OSError (e.g. FileNotFoundError) propagates.
  with stream:
    try:
      return _load_stream(stream)
    except _FormatError as e:
      raise CheckpointError(f'{label}: {e}') from None
    except RecursionError:
      raise CheckpointError(f'{label}: objects nested too deeply') from None
    except MemoryError:
      raise CheckpointError(f'{label}: out of memory while loading') from None
    except (pickle.UnpicklingError, EOFError) as e:
      raise CheckpointError(
          f'{label}: corrupt or truncated pickle data '
          f'({type(e).__name__}: {_clip(str(e))})') from e
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
      raise CheckpointError(
          f'{label}: corrupt zip archive ({_clip(str(e))})') from e
    except Exception as e:  # pylint: disable=broad-except
      # Anything else raised while decoding untrusted bytes (TypeError from a
      # malformed REDUCE, UnicodeDecodeError, ...) is a bad file, not a bug
      # the caller can act on differently.
      raise CheckpointError(
          f'{label}: malformed checkpoint '
          f'({type(e).__name__}: {_clip(str(e))})') from e
