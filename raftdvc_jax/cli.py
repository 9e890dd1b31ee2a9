"""What every command-line entry point shares: user mistakes end as one line on stderr, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

T = TypeVar('T')


def run(body: Callable[[], T], interrupted: str = 'error: interrupted; nothing written') -> T:
  """Runs a CLI body; ValueError/OSError print `error: ...` and exit 1, Ctrl-C prints `interrupted`, exit 130."""
  try:
    return body()
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print(interrupted, file=sys.stderr)
    sys.exit(130)
