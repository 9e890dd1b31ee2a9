"""Tests for the torch-free, code-free PyTorch checkpoint reader."""

import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch  # a test dependency ([test] extra): the security tests must never be skipped silently

from raftdvc_jax.convert import torch_reader
from raftdvc_jax.convert.torch_reader import CheckpointError

FORMATS = ('zip', 'legacy')

_NP_DTYPES = {
    torch.float64: np.dtype(np.float64),
    torch.float32: np.dtype(np.float32),
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: np.dtype(ml_dtypes.bfloat16),
    torch.int64: np.dtype(np.int64),
    torch.int32: np.dtype(np.int32),
    torch.int16: np.dtype(np.int16),
    torch.int8: np.dtype(np.int8),
    torch.uint8: np.dtype(np.uint8),
    torch.bool: np.dtype(np.bool_),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
    torch.uint16: np.dtype(np.uint16),
    torch.uint32: np.dtype(np.uint32),
    torch.uint64: np.dtype(np.uint64),
    torch.float8_e4m3fn: np.dtype(ml_dtypes.float8_e4m3fn),
    torch.float8_e5m2: np.dtype(ml_dtypes.float8_e5m2),
}
# dtypes numpy/torch cannot compare by value directly: compare the bits.
_BIT_VIEWS = {
    torch.bfloat16: (torch.int16, np.int16),
    torch.float8_e4m3fn: (torch.uint8, np.uint8),
    torch.float8_e5m2: (torch.uint8, np.uint8),
}


def _save(obj, path, fmt, **kwargs):
  torch.save(obj, path, _use_new_zipfile_serialization=(fmt == 'zip'),
             **kwargs)
  return path


def _assert_same(ours, ref, where='root'):
  """Checks the reader's output against what torch.load returns."""
  if isinstance(ref, torch.Tensor):
    assert isinstance(ours, np.ndarray), where
    assert ours.dtype == _NP_DTYPES[ref.dtype], where
    assert ours.shape == tuple(ref.shape), where
    assert ours.flags.c_contiguous and ours.flags.writeable, where
    assert ours.base is None, where  # A copy, not a view of file bytes.
    ref = ref.detach().resolve_conj().resolve_neg().contiguous()
    if ref.dtype in _BIT_VIEWS:
      torch_bits, np_bits = _BIT_VIEWS[ref.dtype]
      np.testing.assert_array_equal(ours.view(np_bits),
                                    ref.view(torch_bits).numpy(), err_msg=where)
    else:
      np.testing.assert_array_equal(ours, ref.numpy(), err_msg=where)
  elif isinstance(ref, np.ndarray):
    assert isinstance(ours, np.ndarray) and ours.dtype == ref.dtype, where
    np.testing.assert_array_equal(ours, ref, err_msg=where)
  elif isinstance(ref, np.generic):
    assert type(ours) is type(ref), where
    assert ours == ref or (np.isnan(ours) and np.isnan(ref)), where
  elif isinstance(ref, torch.dtype):
    assert ours == _NP_DTYPES[ref], where
  elif isinstance(ref, torch.device):
    assert ours == str(ref), where
  elif isinstance(ref, dict):
    assert isinstance(ours, dict), where
    assert list(ours) == list(ref), where
    for key in ref:
      _assert_same(ours[key], ref[key], f'{where}[{key!r}]')
  elif isinstance(ref, (list, tuple)):
    # torch.Size comes back as a plain tuple.
    expected_type = tuple if isinstance(ref, tuple) else list
    assert type(ours) is expected_type and len(ours) == len(ref), where
    for i, (a, b) in enumerate(zip(ours, ref)):
      _assert_same(a, b, f'{where}[{i}]')
  else:
    assert type(ours) is type(ref) and ours == ref, where


def _roundtrip(obj, tmp_path, fmt, **kwargs):
  path = _save(obj, tmp_path / f'ckpt_{fmt}.pt', fmt, **kwargs)
  ours = torch_reader.load(path)
  _assert_same(ours, torch.load(path, weights_only=False))
  return ours


# --------------------------------------------------------------------------
# Round trips


def _values(dtype):
  if dtype == torch.bool:
    return torch.tensor([[True, False, True], [False, False, True]])
  if dtype.is_complex:
    return torch.tensor([[1 + 2j, -3.5j, 0], [2.25, 1e-3 - 1j, -1]],
                        dtype=dtype)
  if dtype.is_floating_point:
    return torch.tensor([[0.5, -1.75, float('inf')], [float('nan'), 3.0, -0.0]],
                        dtype=dtype)
  info = torch.iinfo(dtype)
  return torch.tensor([[info.min, info.max, 0], [1, 2, 3]]).to(dtype)


@pytest.mark.parametrize('fmt', FORMATS)
def test_every_dtype(tmp_path, fmt):
  dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16,
            torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
            torch.bool, torch.complex64, torch.complex128]
  ours = _roundtrip({str(d): _values(d) for d in dtypes}, tmp_path, fmt)
  assert ours['torch.bfloat16'].dtype == ml_dtypes.bfloat16


def test_untyped_storage_dtypes(tmp_path):
  # uint16/32/64 and float8 are saved with _rebuild_tensor_v3 on a byte
  # storage; offsets then count elements of the tensor dtype. (torch itself
  # cannot write these dtypes in the legacy format.)
  obj = {}
  for dtype in (torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn,
                torch.float8_e5m2):
    base = torch.tensor([1, 2, 3, 4, 5, 6, 7]).to(dtype)
    obj[str(dtype)] = base
    obj[str(dtype) + '_tail'] = base[2:]
  _roundtrip(obj, tmp_path, 'zip')


@pytest.mark.parametrize('fmt', FORMATS)
def test_views_strides_and_offsets(tmp_path, fmt):
  base = torch.arange(48, dtype=torch.float32).reshape(4, 12)
  obj = {
      'base': base,
      'offset': base.reshape(-1)[3:],  # storage offset 3
      'transposed': base.T,  # strides (1, 12)
      'column': base[:, 5],
      'strided': base[1:3, ::3],
      'permuted': torch.arange(24.).reshape(2, 3, 4).permute(2, 0, 1),
      'expanded': torch.arange(3.).reshape(3, 1).expand(3, 5),  # stride 0
      'scalar': torch.tensor(7.5),
      'empty': torch.zeros(0, 3),
      'conj': torch.tensor([1 + 2j, 3 - 4j]).conj(),
  }
  ours = _roundtrip(obj, tmp_path, fmt)
  np.testing.assert_array_equal(ours['transposed'],
                                np.arange(48.).reshape(4, 12).T)
  assert ours['offset'][0] == 3 and ours['scalar'].shape == ()
  np.testing.assert_array_equal(ours['conj'], [1 - 2j, 3 + 4j])


@pytest.mark.parametrize('fmt', FORMATS)
def test_shared_storage_and_identity(tmp_path, fmt):
  t = torch.arange(10, dtype=torch.int64)
  obj = {'a': t[:6], 'b': t[4:], 'again': [t, t], 'whole': t}
  ours = _roundtrip(obj, tmp_path, fmt)
  # One tensor pickled twice stays one array; distinct views are distinct.
  assert ours['again'][0] is ours['again'][1] is ours['whole']
  ours['a'][4] = -1
  assert ours['b'][0] == 4 and ours['whole'][4] == 4


@pytest.mark.parametrize('fmt', FORMATS)
def test_nested_containers_and_scalars(tmp_path, fmt):
  obj = {
      'int': 3, 'big': 2**70, 'neg': -5, 'float': 2.5, 'str': 'héllo',
      'none': None, 'flag': True, 'bytes': b'\x00\xff', 'empty_bytes': b'',
      'complex': 1 - 2j,
      'list': [1, [2, [3, None]], ('x', 2.0)],
      'tuple': (18, 1, 60, 80, 80),
      'od': collections.OrderedDict([('z', 1), ('a', {'k': [None]})]),
      'nested': {'deep': {'deeper': {'t': torch.ones(2)}}},
      'set': {1, 2, 3}, 'frozen': frozenset({'a'}),
      'dtype': torch.float16, 'device': torch.device('cpu'),
      'size': torch.Size([2, 3]),
  }
  ours = _roundtrip(obj, tmp_path, fmt)
  assert isinstance(ours['od'], collections.OrderedDict)
  assert ours['set'] == {1, 2, 3} and ours['frozen'] == frozenset({'a'})


@pytest.mark.parametrize('fmt', FORMATS)
def test_numpy_values(tmp_path, fmt):
  # VolRAFT stores numpy loss lists next to its state dicts.
  obj = {
      'loss_list_train': np.array([0.5, 0.25, 0.125], dtype=np.float64),
      'loss_list_valid': np.array([[1, 2], [3, 4]], dtype=np.float32),
      'fortran': np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
      'big_endian': np.arange(4, dtype='>i4'),
      'empty': np.zeros((0, 2), np.float32),
      'zero_d': np.array(3.5),
      'bools': np.array([True, False]),
      'strings': np.array(['ab', 'c']),
      'f64': np.float64(1.25), 'f32': np.float32(-2.5), 'i64': np.int64(-7),
      'b': np.bool_(True), 'nan': np.float64('nan'),
      'patch_shape': (18, 1, 60, 80, 80), 'flow_shape': [18, 3, 60, 80, 80],
  }
  ours = _roundtrip(obj, tmp_path, fmt)
  # Like numpy's own unpickling, pickled big-endian arrays become native.
  assert ours['big_endian'].dtype == np.int32
  assert ours['fortran'].tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('protocol', [4, 5])
def test_newer_pickle_protocols(tmp_path, fmt, protocol):
  obj = {'t': torch.arange(6.).reshape(2, 3).T, 'n': np.arange(5.),
         'nf': np.asfortranarray(np.ones((2, 2), np.int32)), 's': np.int32(4),
         'od': collections.OrderedDict(a=1)}
  _roundtrip(obj, tmp_path, fmt, pickle_protocol=protocol)


class _Net(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv3d(2, 4, 3, padding=1)
    self.norm = torch.nn.BatchNorm3d(4)
    self.gn = torch.nn.GroupNorm(2, 4)
    self.scale = torch.nn.Parameter(torch.tensor(0.5))

  def forward(self, x):
    return self.gn(self.norm(self.conv(x))) * self.scale


@pytest.mark.parametrize('fmt', FORMATS)
def test_training_checkpoint(tmp_path, fmt):
  torch.manual_seed(0)
  net = _Net()
  opt = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=5e-5)
  sched = torch.optim.lr_scheduler.OneCycleLR(
      opt, max_lr=2e-4, total_steps=10, pct_start=0.2, anneal_strategy='cos',
      cycle_momentum=False)
  net(torch.randn(1, 2, 4, 4, 4)).square().mean().backward()
  opt.step()
  sched.step()
  cyclic_opt = torch.optim.AdamW(net.parameters(), lr=2e-5)
  cyclic = torch.optim.lr_scheduler.CyclicLR(
      cyclic_opt, base_lr=2e-5, max_lr=2e-4, step_size_up=5, mode='triangular2',
      cycle_momentum=False)
  ckpt = {
      'model_state_dict': net.state_dict(),
      'model_config': {'iters': 12, 'corr_radius': 4, 'hidden_dim': 96,
                       'encoder_type': 'basic', 'use_sep_conv': True},
      'epoch': 3, 'global_step': 30, 'best_val_loss': 0.125,
      'optimizer_state_dict': opt.state_dict(),
      'scheduler_state_dict': sched.state_dict(),
      'cyclic_state_dict': cyclic.state_dict(),
      'params': list(net.parameters()),  # nn.Parameter objects themselves
  }
  ours = _roundtrip(ckpt, tmp_path, fmt)
  sd = ours['model_state_dict']
  assert isinstance(sd, collections.OrderedDict)
  assert sd['norm.num_batches_tracked'].dtype == np.int64
  assert sd['conv.weight'].shape == (4, 2, 3, 3, 3)
  # torch's per-module version record survives as the `_metadata` attribute.
  assert sd._metadata['norm']['version'] == net.state_dict()._metadata[
      'norm']['version']


@pytest.mark.filterwarnings('ignore::UserWarning')  # TypedStorage deprecation
def test_bare_storages(tmp_path):
  obj = {'untyped': torch.arange(4.).untyped_storage(),
         'typed': torch.arange(3, dtype=torch.int16).storage()}
  ours = torch_reader.load(_save(obj, tmp_path / 's.pt', 'zip'))
  np.testing.assert_array_equal(ours['untyped'],
                                np.arange(4, dtype=np.float32).view(np.uint8))
  assert ours['typed'].dtype == np.int16 and ours['typed'].tolist() == [0, 1, 2]


def test_file_object_input(tmp_path):
  path = _save({'w': torch.ones(3)}, tmp_path / 'a.pt', 'zip')
  with open(path, 'rb') as f:
    ours = torch_reader.load(f)
  np.testing.assert_array_equal(ours['w'], np.ones(3, np.float32))
  ours = torch_reader.load(io.BytesIO(path.read_bytes()))
  np.testing.assert_array_equal(ours['w'], np.ones(3, np.float32))


def _rewrite_zip(src, dst, edit):
  """Copies a zip checkpoint, letting `edit(name, data)` change records."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
    for info in zin.infolist():
      data = edit(info.filename, zin.read(info.filename))
      if data is not None:
        zout.writestr(info.filename, data)
  return dst


def test_big_endian_zip(tmp_path):
  # torch writes byteorder='big' on big-endian hosts; emulate one.
  obj = {'f': torch.tensor([1.5, -2.0, 3.25]).reshape(3, 1).T,
         'i': torch.tensor([1, -2, 3 << 40]),
         'h': torch.tensor([0.5, 2.0], dtype=torch.float16),
         'c': torch.tensor([1 + 2j, -3j]),
         'b': torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
         'u8': torch.tensor([1, 200], dtype=torch.uint8)}
  src = _save(obj, tmp_path / 'le.pt', 'zip')
  ref = torch.load(src)
  # Map storage record -> numpy dtype by loading the little-endian file.
  itemsize = {}
  with zipfile.ZipFile(src) as z:
    root = z.namelist()[0].split('/')[0]
  key_order = {'f': '0', 'i': '1', 'h': '2', 'c': '3', 'b': '4', 'u8': '5'}
  # Complex values are swapped per component (as torch does).
  swap = {'f': 'u4', 'i': 'u8', 'h': 'u2', 'c': 'u4', 'b': 'u2', 'u8': 'u1'}
  for name, key in key_order.items():
    itemsize[f'{root}/data/{key}'] = swap[name]

  def edit(name, data):
    if name == f'{root}/byteorder':
      return b'big'
    if name in itemsize:
      return np.frombuffer(data, itemsize[name]).byteswap().tobytes()
    return data

  dst = _rewrite_zip(src, tmp_path / 'be.pt', edit)
  _assert_same(torch_reader.load(dst), ref)


# --------------------------------------------------------------------------
# Hostile files


class _Reduce:
  """Pickles as `fn(*args)`; only ever dumped, never loaded, in these tests."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


def _p2_call(module, name, arg):
  """Protocol-2 opcodes for `module.name(arg)` with GLOBAL."""
  raw = arg.encode()
  return (b'\x80\x02c' + f'{module}\n{name}\n'.encode() +
          b'X' + struct.pack('<I', len(raw)) + raw + b'\x85R.')


def _p4_call(module, name, arg):
  """Protocol-4 opcodes for `module.name(arg)` with STACK_GLOBAL."""

  def short(s):
    raw = s.encode()
    return b'\x8c' + bytes([len(raw)]) + raw

  return (b'\x80\x04' + short(module) + short(name) + b'\x93' + short(arg) +
          b'\x85R.')


def _p0_inst(module, name, arg):
  """Protocol-0 INST opcode: `(S'arg'\\nimodule\\nname\\n.`."""
  return f"(S'{arg}'\ni{module}\n{name}\n.".encode()


def _legacy_stream(payload: bytes) -> bytes:
  header = (pickle.dumps(torch_reader._LEGACY_MAGIC, protocol=2) +
            pickle.dumps(1001, protocol=2) +
            pickle.dumps({'protocol_version': 1001, 'little_endian': True},
                         protocol=2))
  return header + payload


def _zip_with(records: dict) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as z:
    for name, data in records.items():
      z.writestr(name, data)
  return buf.getvalue()


def _containers(payload: bytes):
  """The same payload as a legacy stream, as the magic pickle, in a zip."""
  return {
      'legacy': _legacy_stream(payload),
      'magic': payload,
      'zip': _zip_with({'archive/data.pkl': payload,
                        'archive/byteorder': b'little'}),
  }


def _expect_refused(tmp_path, data: bytes, fragment: str, name='evil.pt'):
  path = tmp_path / name
  path.write_bytes(data)
  with pytest.raises(CheckpointError) as err:
    torch_reader.load(path)
  msg = str(err.value)
  assert fragment in msg, msg
  assert str(path) in msg and '\n' not in msg
  return msg


@pytest.mark.parametrize('build', [_p2_call, _p4_call, _p0_inst])
@pytest.mark.parametrize('target', [('os', 'system'), ('posix', 'system'),
                                    ('builtins', 'eval'), ('builtins', 'exec'),
                                    ('__builtin__', 'eval'),
                                    ('subprocess', 'Popen'),
                                    ('builtins', 'getattr')])
def test_hostile_globals_refused(tmp_path, build, target):
  module, name = target
  marker = tmp_path / 'pwned'
  if name == 'system':
    arg = f'touch {marker}'
  elif name == 'Popen':
    arg = f'touch {marker}'
  else:
    arg = f"open({str(marker)!r}, 'w').close()"
  for kind, data in _containers(build(module, name, arg)).items():
    if build is _p0_inst and kind != 'zip':
      continue  # Without a PROTO opcode the file is not a torch stream.
    msg = _expect_refused(tmp_path, data, f'{module}.{name}', f'{kind}.pt')
    assert 'refused global' in msg
  assert not marker.exists()


@pytest.mark.parametrize('protocol', [2, 4])
def test_hostile_reduce_objects_refused(tmp_path, protocol):
  marker = tmp_path / 'pwned'
  payloads = [
      _Reduce(os.system, f'touch {marker}'),
      _Reduce(subprocess.Popen, ['touch', str(marker)]),
      _Reduce(eval, f"open({str(marker)!r}, 'w')"),
      _Reduce(exec, f"open({str(marker)!r}, 'w')"),
      _Reduce(open, str(marker), 'w'),
  ]
  for payload in payloads:
    data = pickle.dumps(payload, protocol=protocol)
    for kind, blob in _containers(data).items():
      _expect_refused(tmp_path, blob, f'.{payload.fn.__name__}', f'{kind}.pt')
  assert not marker.exists()


@pytest.mark.parametrize('fmt', FORMATS)
def test_hostile_object_inside_real_checkpoint(tmp_path, fmt):
  marker = tmp_path / 'pwned'
  ckpt = {'model_state_dict': _Net().state_dict(), 'epoch': 1,
          'extra': [_Reduce(os.system, f'touch {marker}')]}
  path = _save(ckpt, tmp_path / 'evil.pt', fmt)
  with pytest.raises(CheckpointError, match=r'refused global .*\.system'):
    torch_reader.load(path)
  assert not marker.exists()


def test_allowlist_cannot_be_mutated(tmp_path):
  # BUILD with slot state on an allowlisted global would setattr on the
  # shared stand-in; it must fail and leave later loads unaffected.
  payload = (b'\x80\x02ctorch\nFloatStorage\n'
             b'N}X\x07\x00\x00\x00payloadX\x07\x00\x00\x00float64s\x86b.')
  _expect_refused(tmp_path, _legacy_stream(payload), 'modify')
  payload = b'\x80\x02c_codecs\nencode\nN}X\x03\x00\x00\x00fooK\x01s\x86b.'
  _expect_refused(tmp_path, _legacy_stream(payload), 'modify')
  # NEWOBJ needs a class; none of the stand-ins is one.
  payload = b'\x80\x02ccollections\nOrderedDict\n)\x81.'
  _expect_refused(tmp_path, _legacy_stream(payload), 'must be a type')
  _roundtrip({'f': torch.ones(2)}, tmp_path, 'legacy')


@pytest.mark.parametrize('fmt', FORMATS)
def test_object_arrays_refused(tmp_path, fmt):
  path = _save({'x': np.array([1, 'a'], dtype=object)}, tmp_path / 'o.pt', fmt)
  with pytest.raises(CheckpointError, match='numpy dtype O8 is not allowed'):
    torch_reader.load(path)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_torchscript_archive_refused(tmp_path):
  path = tmp_path / 'script.pt'
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
  _expect_refused(tmp_path, path.read_bytes(), 'TorchScript')


# --------------------------------------------------------------------------
# Malformed files


def test_empty_and_garbage(tmp_path):
  _expect_refused(tmp_path, b'', 'empty file')
  _expect_refused(tmp_path, np.random.default_rng(0).bytes(4096),
                  'not a PyTorch checkpoint')
  _expect_refused(tmp_path, b'hello world\n', 'not a PyTorch checkpoint')
  _expect_refused(tmp_path, b'\x80\x02' + bytes(range(256)), 'pickle')
  _expect_refused(tmp_path, pickle.dumps(12345, protocol=2), 'bad magic')
  _expect_refused(tmp_path, b'\x80\x05\xff\xff', 'pickle')
  _expect_refused(tmp_path, pickle.dumps({'a': 1}, protocol=2), 'magic')
  _expect_refused(tmp_path, b'PK\x03\x04' + b'\0' * 100, 'zip archive')


@pytest.mark.parametrize('fmt', FORMATS)
def test_truncated_files(tmp_path, fmt):
  ckpt = {'model_state_dict': _Net().state_dict(), 'epoch': 2,
          'loss': np.arange(4.)}
  data = _save(ckpt, tmp_path / 'full.pt', fmt).read_bytes()
  cuts = sorted({1, 2, 5, 11, 40, 100, len(data) // 3, len(data) // 2,
                 len(data) - 100, len(data) - 9, len(data) - 1} |
                set(range(0, len(data), max(1, len(data) // 37))) - {0})
  for cut in cuts:
    path = tmp_path / f'cut_{cut}.pt'
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError) as err:
      torch_reader.load(path)
    assert str(path) in str(err.value) and '\n' not in str(err.value)


def test_deep_nesting(tmp_path):
  depth = 100_000
  payload = b'\x80\x02' + b']' * depth + b'a' * (depth - 1) + b'.'
  _expect_refused(tmp_path, _containers(payload)['zip'], 'nested too deeply')


def test_zip_without_data_pkl(tmp_path):
  data = _zip_with({'archive/version': b'3\n', 'archive/data/0': b'\0' * 8})
  _expect_refused(tmp_path, data, 'data.pkl')


# Hand-assembled data.pkl pieces for tensors with chosen metadata.
def _str(s):
  raw = s.encode()
  return b'X' + struct.pack('<I', len(raw)) + raw


def _int(i):
  return b'J' + struct.pack('<i', i)


def _tup(*items):
  return b'(' + b''.join(items) + b't'


def _tensor_pickle(numel, size, stride, offset=0,
                   storage=b'ctorch\nFloatStorage\n'):
  pid = _tup(_str('storage'), storage, _str('0'), _str('cpu'), _int(numel))
  args = _tup(pid + b'Q', _int(offset), _tup(*map(_int, size)),
              _tup(*map(_int, stride)), b'\x89', b'}')
  return (b'\x80\x02}' + _str('t') + b'ctorch._utils\n_rebuild_tensor_v2\n' +
          args + b'Rs.')


def _tensor_zip(pkl, record=None):
  records = {'archive/data.pkl': pkl, 'archive/byteorder': b'little',
             'archive/version': b'3\n'}
  if record is not None:
    records['archive/data/0'] = record
  return _zip_with(records)


def test_hand_assembled_tensor_is_read(tmp_path):
  data = _tensor_zip(_tensor_pickle(6, (2, 2), (1, 3), offset=1),
                     np.arange(6, dtype=np.float32).tobytes())
  path = tmp_path / 'ok.pt'
  path.write_bytes(data)
  np.testing.assert_array_equal(torch_reader.load(path)['t'],
                                [[1., 4.], [2., 5.]])
  assert torch.load(path)['t'].tolist() == [[1., 4.], [2., 5.]]


def test_storage_problems(tmp_path):
  floats = np.arange(4, dtype=np.float32).tobytes()
  _expect_refused(tmp_path, _tensor_zip(_tensor_pickle(4, (4,), (1,))),
                  "missing storage record 'archive/data/0'")
  _expect_refused(tmp_path, _tensor_zip(_tensor_pickle(4, (4,), (1,)),
                                        floats[:8]), 'has 8 bytes, expected 16')
  _expect_refused(tmp_path, _tensor_zip(_tensor_pickle(4, (10,), (1,)), floats),
                  'too small')
  _expect_refused(tmp_path, _tensor_zip(_tensor_pickle(4, (2, 2), (2, 1), 1),
                                        floats), 'too small')
  _expect_refused(tmp_path, _tensor_zip(_tensor_pickle(4, (2,), (-1,)), floats),
                  'invalid tensor stride')
  _expect_refused(tmp_path, _tensor_zip(
      _tensor_pickle(4, (1 << 20, 1 << 20), (0, 0)), floats), 'expand')
  _expect_refused(tmp_path, _tensor_zip(
      _tensor_pickle(4, (4,), (1,), storage=b'ctorch\nTensor\n'), floats),
                  'invalid storage type')
  _expect_refused(tmp_path, _tensor_zip(
      _tensor_pickle(4, (4,), (1,), storage=b'ctorch\nQInt8Storage\n'), floats),
                  'torch.QInt8Storage')


def test_legacy_storage_problems(tmp_path):
  path = _save({'t': torch.arange(4.)}, tmp_path / 'l.pt', 'legacy')
  data = path.read_bytes()
  # The last record is an int64 element count then the raw floats.
  count_at = len(data) - 16 - 8
  assert struct.unpack('<q', data[count_at:count_at + 8]) == (4,)
  forged = data[:count_at] + struct.pack('<q', 1 << 60) + data[count_at + 8:]
  _expect_refused(tmp_path, forged, 'truncated inside storage')
  short = data[:count_at] + struct.pack('<q', 2) + data[count_at + 8:]
  _expect_refused(tmp_path, short, 'holds 2 elements, expected 4')


def test_missing_file_is_oserror(tmp_path):
  with pytest.raises(FileNotFoundError):
    torch_reader.load(tmp_path / 'nope.pt')


def test_module_imports_neither_torch_nor_jax():
  # Load the file by path so the package __init__ (which may pull in jax for
  # other modules) does not count against the reader.
  code = ('import importlib.util, sys; '
          'spec = importlib.util.spec_from_file_location('
          f'"r", {torch_reader.__file__!r}); '
          'spec.loader.exec_module(importlib.util.module_from_spec(spec)); '
          'bad = [m for m in ("torch", "jax") if m in sys.modules]; '
          'assert not bad, bad')
  subprocess.run([sys.executable, '-c', code], check=True)
