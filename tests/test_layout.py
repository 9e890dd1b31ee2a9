"""The house rules: layers import downward only, no library or tool code imports tests/, every command has --help."""

import ast
import os
import subprocess
import sys

import pytest

from tests.scripts import script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subpackage -> layer; a module may import its own layer or lower ones (README, "Layout").
LAYERS = {'model': 0, 'data': 1, 'convert': 1, 'reference': 1, 'train': 2, 'refine': 2, 'infer': 3,
          'analysis': 3, 'commands': 4}


def _imports(path):
  """Every raftdvc_jax module a file imports (top-level or inside functions), as dotted names."""
  with open(path) as f:
    tree = ast.parse(f.read())
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names += [f'{node.module}.{a.name}' for a in node.names]
  return names


def _sources(folder):
  for root, _, files in os.walk(os.path.join(ROOT, folder)):
    for name in files:
      if name.endswith('.py'):
        yield os.path.join(root, name)


def test_layers_import_downward_only():
  upward = []
  for path in _sources('raftdvc_jax'):
    parts = os.path.relpath(path, os.path.join(ROOT, 'raftdvc_jax')).split(os.sep)
    here = LAYERS.get(parts[0]) if len(parts) > 1 else None
    for name in _imports(path):
      bits = name.split('.')
      if bits[0] != 'raftdvc_jax':
        continue
      if len(bits) == 1 and here is not None:  # the top package re-exports higher layers lazily
        upward.append(f'{os.path.relpath(path, ROOT)} imports raftdvc_jax')
      there = LAYERS.get(bits[1]) if len(bits) > 1 else None
      if here is not None and there is not None and there > here:
        upward.append(f'{os.path.relpath(path, ROOT)} imports {name}')
  assert not upward, '\n'.join(sorted(set(upward)))


def test_no_library_or_tool_code_imports_the_tests():
  offenders = [os.path.relpath(p, ROOT) for folder in ('raftdvc_jax', 'tools') for p in _sources(folder)
               if any(n == 'tests' or n.startswith('tests.') for n in _imports(p))]
  assert not offenders, offenders


def _console_scripts():
  import tomllib  # pylint: disable=import-outside-toplevel
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return sorted(tomllib.load(f)['project']['scripts'])


def test_the_commands_readme_promises_are_installed():
  assert _console_scripts() == sorted(['raftdvc-infer', 'raftdvc-train', 'raftdvc-convert', 'raftdvc-analyze',
                                       'raftdvc-evaluate', 'raftdvc-export', 'raftdvc-make-dataset'])
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  for name in _console_scripts():
    assert name in readme, name


@pytest.mark.parametrize('name', _console_scripts())
def test_every_command_has_help_from_another_folder(name, tmp_path):
  run = subprocess.run([script(name), '--help'], capture_output=True, text=True, cwd=tmp_path, timeout=120)
  assert run.returncode == 0, run.stderr
  assert '--' in run.stdout and len(run.stdout.splitlines()) > 5
