"""The dependency-free TensorBoard writer: TFRecord framing, CRC32C and the Event protobuf encoding."""

import os
import struct

from raftdvc_jax.train import tensorboard


def _fields(buf):
  """A minimal protobuf decoder: [(field number, value)], values as int, bytes, or raw 4/8-byte words."""
  out, i = [], 0
  def varint():
    nonlocal i
    shift = value = 0
    while True:
      b = buf[i]
      i += 1
      value |= (b & 0x7F) << shift
      shift += 7
      if not b & 0x80:
        return value
  while i < len(buf):
    key = varint()
    number, wire = key >> 3, key & 7
    if wire == 0:
      out.append((number, varint()))
    elif wire == 1:
      out.append((number, buf[i:i + 8]))
      i += 8
    elif wire == 2:
      n = varint()
      out.append((number, buf[i:i + n]))
      i += n
    elif wire == 5:
      out.append((number, buf[i:i + 4]))
      i += 4
    else:
      raise AssertionError(f'unexpected wire type {wire}')
  return out


def _records(path):
  data = open(path, 'rb').read()
  i, out = 0, []
  while i < len(data):
    header = data[i:i + 8]
    (length,) = struct.unpack('<Q', header)
    assert struct.unpack('<I', data[i + 8:i + 12])[0] == tensorboard.masked_crc32c(header)
    payload = data[i + 12:i + 12 + length]
    assert struct.unpack('<I', data[i + 12 + length:i + 16 + length])[0] == tensorboard.masked_crc32c(payload)
    out.append(dict(_fields(payload)) | {'_all': _fields(payload)})
    i += 16 + length
  return out


def test_crc32c_known_value():
  assert tensorboard.crc32c(b'123456789') == 0xE3069283  # the CRC-32C check value
  assert tensorboard.crc32c(b'') == 0


def test_writer_events_decode(tmp_path):
  writer = tensorboard.SummaryWriter(str(tmp_path), start_step=5)
  writer.scalars(5, {'train/loss': 1.25, 'val/epe': 0.5})
  writer.scalars(6, {'train/loss': 1.0, 'skip': None})
  writer.close()
  (name,) = os.listdir(tmp_path)
  assert name.startswith('events.out.tfevents.')
  version, start, first, second = _records(os.path.join(tmp_path, name))
  assert version[3] == b'brain.Event:2'
  assert start[2] == 5 and dict(_fields(start[7])) == {1: 1}  # SessionLog status START
  assert first[2] == 5 and struct.unpack('<d', first[1])[0] > 1e9
  values = [dict(_fields(v)) for n, v in first['_all'] if n == 5 for _, v in _fields(v)]
  assert [(v[1].decode(), struct.unpack('<f', v[2])[0]) for v in values] == [('train/loss', 1.25), ('val/epe', 0.5)]
  values = [dict(_fields(v)) for n, v in second['_all'] if n == 5 for _, v in _fields(v)]
  assert second[2] == 6 and [v[1] for v in values] == [b'train/loss']


def test_negative_and_large_steps_encode_as_int64():
  event = tensorboard.scalar_event(2 ** 40, {'x': 1.0}, wall_time=0.0)
  assert dict(_fields(event))[2] == 2 ** 40
  # protobuf int64: a negative value is its 64-bit two's complement.
  assert dict(_fields(tensorboard.scalar_event(-1, {}, wall_time=0.0)))[2] == 2 ** 64 - 1
