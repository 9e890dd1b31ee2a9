"""Progress bars (tqdm) on stderr, redrawn often on a terminal and rarely in a log file."""

from __future__ import annotations

import sys

import tqdm

# A log file (stderr not a terminal) gets a line at most every LOG_INTERVAL s, so a day-long run stays short.
TTY_INTERVAL = 0.5
LOG_INTERVAL = 60.0


def bar(total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = 'it') -> tqdm.tqdm:
  """A tqdm bar over `total` items on stderr; disabled (a no-op) when not `enabled`."""
  tty = sys.stderr.isatty()
  return tqdm.tqdm(total=total, desc=desc, initial=initial, unit=unit, disable=not enabled, file=sys.stderr,
                   mininterval=TTY_INTERVAL if tty else LOG_INTERVAL, dynamic_ncols=tty, leave=True,
                   ascii=not tty)
