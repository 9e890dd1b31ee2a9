"""Imports a tools/ script as a module for in-process tests."""

import importlib.util
import os

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_tool(name: str):
  """tools/<name>.py as a module; its absl flags are unregistered again, since flags are process-global."""
  before = set(flags.FLAGS)
  spec = importlib.util.spec_from_file_location(f'tool_{name}', os.path.join(ROOT, 'tools', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for flag in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, flag)
  return module
