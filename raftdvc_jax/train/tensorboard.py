"""A dependency-free TensorBoard scalar writer (the TFRecord event-file format, no TensorFlow).

An event file is a sequence of records: uint64 length, masked CRC32C of the length, the serialized Event
protobuf, masked CRC32C of the data. Only the few Event fields scalars need are encoded here: wall_time (1),
step (2), file_version (3), summary (5) with Summary.Value tag (1) / simple_value (2), and session_log (7)
status START, which tells TensorBoard that a resumed run replaces what an interrupted one wrote after it.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Mapping


def _crc32c_table():
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord uses."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
  while True:
    bits = n & 0x7F
    n >>= 7
    if n:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, wire: int) -> bytes:
  return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _field(number, 2) + _varint(len(payload)) + payload


def _event(step: int, wall_time: float, body: bytes) -> bytes:
  return _field(1, 1) + struct.pack('<d', wall_time) + _field(2, 0) + _varint(int(step)) + body


def record(data: bytes) -> bytes:
  """One TFRecord around `data`."""
  length = struct.pack('<Q', len(data))
  return length + struct.pack('<I', masked_crc32c(length)) + data + struct.pack('<I', masked_crc32c(data))


def scalar_event(step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> bytes:
  """A serialized Event holding one simple_value per tag."""
  values = b''.join(
      _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack('<f', float(value)))
      for tag, value in scalars.items())
  return _event(step, time.time() if wall_time is None else wall_time, _bytes_field(5, values))


class SummaryWriter:
  """Appends scalar events to a new events.out.tfevents.* file in `logdir`."""

  def __init__(self, logdir, start_step: int | None = None):
    os.makedirs(logdir, exist_ok=True)
    name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}'
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, 'ab')
    now = time.time()
    self._file.write(record(_event(0, now, _bytes_field(3, b'brain.Event:2'))))
    if start_step is not None:  # SessionLog START: drop what an interrupted run logged from here on
      self._file.write(record(_event(start_step, now, _bytes_field(7, _field(1, 0) + _varint(1)))))
    self._file.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    finite = {k: v for k, v in values.items() if v is not None}
    if finite:
      self._file.write(record(scalar_event(step, finite)))
      self._file.flush()

  def close(self) -> None:
    self._file.close()
