"""Fixed-size batches: every batch has one shape, so one compiled program runs them all."""

from __future__ import annotations

from typing import Iterator, Sequence


def padded_chunks(items: Sequence, size: int) -> Iterator[tuple[list, int]]:
  """Consecutive chunks of exactly `size` items, the last filled up by repeating its last item.

  Yields (chunk, real): the first `real` entries of a chunk are its own, the rest repeats whose results
  the caller discards. A repeated item is valid input (not zeros, which a network or solver may reject).
  """
  size = int(size)
  if size < 1:
    raise ValueError(f'batch size must be >= 1, got {size}')
  for start in range(0, len(items), size):
    chunk = list(items[start:start + size])
    yield chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)


def even_size(count: int, most: int) -> int:
  """The batch size <= most that splits `count` items into the fewest batches of nearly equal size."""
  batch = max(1, min(int(most), int(count)))
  batches = -(-int(count) // batch)
  return -(-int(count) // batches)
