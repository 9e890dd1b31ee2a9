"""The command-line entry points (raftdvc-infer, raftdvc-train, ...): absl flags plus dispatch to the library.

Each module defines its flags at import, so import only the one being run.
"""

import ast
import importlib
import os
import sys

HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull')


def run_from_checkout(name: str) -> None:
  """Runs command `name` for `python NAME.py` in a checkout; before `pip install`, --help still works."""
  try:
    module = importlib.import_module(f'raftdvc_jax.commands.{name}')
  except ModuleNotFoundError as e:  # a dependency is missing: one line (and the usage for --help), no traceback
    # Name the checkout, not the working directory: `python path/to/infer.py` may run from anywhere.
    checkout = os.path.dirname(os.path.abspath(sys.argv[0]))
    hint = f'{e.name} is not installed for {sys.executable}; run `{sys.executable} -m pip install -e {checkout}` first'
    if any(a.split('=', 1)[0] in HELP_FLAGS for a in sys.argv[1:]):
      with open(os.path.join(os.path.dirname(__file__), f'{name}.py')) as f:
        print(ast.get_docstring(ast.parse(f.read())) or '')
      print(f'\nnote: {hint}')
      sys.exit(0)
    print(f'error: {hint}', file=sys.stderr)
    sys.exit(1)
  module.entry()
