"""A progress bar for training on stderr: step of total, rate, ETA and the latest metrics."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
  if seconds != seconds or seconds == float('inf'):  # NaN / inf before the rate is known
    return '--:--'
  seconds = int(seconds)
  h, rest = divmod(seconds, 3600)
  return f'{h}:{rest // 60:02d}:{rest % 60:02d}' if h else f'{rest // 60:02d}:{rest % 60:02d}'


class Progress:
  """Redrawn in place on a terminal (at most every `interval` s); a line per 5 % of the run otherwise.

  The rate counts only steps done by this process, from the first `update` on (compilation excluded), so a
  resumed run's ETA is right from the start.
  """

  def __init__(self, total: int, start: int = 0, label: str = 'train', enabled: bool = True, stream=None,
               interval: float = 0.5):
    self.total, self.done, self.label, self.enabled = total, start, label, enabled
    self.stream = stream or sys.stderr
    self.tty = getattr(self.stream, 'isatty', lambda: False)()
    self.interval = interval
    self._t0 = None
    self._n0 = start
    self._last_draw = 0.0
    self._last_tick = -1
    self.postfix = ''

  def update(self, step: int, postfix: str | None = None, force: bool = False) -> None:
    """Marks `step` (absolute) as done and redraws if due."""
    now = time.perf_counter()
    if self._t0 is None:
      self._t0, self._n0 = now, step
    self.done = step
    if postfix is not None:
      self.postfix = postfix
    if not self.enabled:
      return
    tick = int(20 * self.done / max(self.total, 1))
    if self.tty and (force or now - self._last_draw >= self.interval or self.done >= self.total):
      self._last_draw = now
      self.stream.write('\r' + self._text(now) + '\x1b[K')
      self.stream.flush()
    elif not self.tty and (force or tick > self._last_tick or self.done >= self.total):
      self._last_tick = tick
      self.stream.write(self._text(now) + '\n')
      self.stream.flush()

  def _text(self, now: float) -> str:
    steps = self.done - self._n0
    elapsed = now - self._t0 if self._t0 is not None else 0.0
    rate = steps / elapsed if elapsed > 0 and steps > 0 else float('nan')
    eta = (self.total - self.done) / rate if rate == rate and rate > 0 else float('nan')
    frac = self.done / max(self.total, 1)
    bar = '#' * int(24 * frac)
    rate_text = f'{rate:.2f} step/s' if rate == rate else '-- step/s'
    text = (f'{self.label} [{bar:<24}] {self.done}/{self.total} {rate_text} '
            f'elapsed {_clock(elapsed)} eta {_clock(eta)}')
    return text + (f'  {self.postfix}' if self.postfix else '')

  def close(self) -> None:
    if self.enabled and self.tty:
      self.stream.write('\n')
      self.stream.flush()
