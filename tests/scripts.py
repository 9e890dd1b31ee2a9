"""The console scripts pyproject.toml installs, found beside the Python that runs the tests."""

import os
import shutil
import sys


def script(name: str) -> str:
  """Path of console script `name` (e.g. 'raftdvc-convert') installed beside this Python; fails if absent."""
  path = shutil.which(name, path=os.path.dirname(sys.executable))
  assert path, f'{name} is not installed beside {sys.executable} (pip install -e .)'
  return path
