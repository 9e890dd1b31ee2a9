"""What every command-line entry point shares: start-up, quiet logs, output checks, and user mistakes ending as
one line on stderr (exit 1), never a traceback."""

from __future__ import annotations

import difflib
import logging as std_logging
import os
import sys
import traceback
from typing import Callable, Sequence, TypeVar

from absl import app
from absl import flags
from absl import logging

T = TypeVar('T')
HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def fail(message: str, code: int = 1):
  """Prints `error: message` on stderr and exits with `code`."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def run(body: Callable[[], T], interrupted: str = 'error: interrupted; nothing written') -> T:
  """Runs a CLI body; ValueError/OSError print `error: ...` and exit 1, Ctrl-C prints `interrupted`, exit 130."""
  try:
    return body()
  except (ValueError, OSError) as e:
    fail(str(e))
  except KeyboardInterrupt:
    print(interrupted, file=sys.stderr)
    sys.exit(130)


def _config_key_error(argv: Sequence[str]) -> str | None:
  """One line for a mistyped --config.a.b=... override: the key and the closest valid one."""
  node = None
  for arg in argv:
    if arg.startswith('--config='):
      node = _load_config_file(arg.split('=', 1)[1])
  for arg in argv:
    if not arg.startswith('--config.') or node is None:
      continue
    dotted = arg[2:].split('=', 1)[0]
    here, path = node, ['config']
    for p in dotted.split('.')[1:]:
      keys = list(here.keys()) if hasattr(here, 'keys') else []
      if p not in keys:
        close = difflib.get_close_matches(p, keys, n=1)
        hint = f'did you mean {".".join(path + close)}?' if close else f'valid keys: {", ".join(keys)}'
        return f'--{dotted}: {".".join(path)} has no key {p!r}; {hint}'
      here, path = here[p], path + [p]
  return None


def _load_config_file(spec: str):
  """get_config(*args) of a --config=FILE[:ARGS] value, or None when that fails (the caller reports it)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  path, *args = spec.split(':', 1)
  try:
    module_spec = importlib.util.spec_from_file_location('raftdvc_config_check', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*args)
  except Exception:  # pylint: disable=broad-except
    return None


def _where(e: BaseException) -> str:
  """file:line of a Python error: where the syntax error is, or the innermost frame that raised."""
  if isinstance(e, SyntaxError):
    return f'{e.filename}:{e.lineno}'
  frame = traceback.extract_tb(e.__traceback__)[-1]
  return f'{frame.filename}:{frame.lineno}'


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with flag, config-file and config-override mistakes as one line (exit 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if 'Traceback' in text:  # an error inside get_config, with its traceback in the message
      files = [line.strip() for line in text.splitlines() if line.strip().startswith('File "')]
      where = files[-1].split('"')[1] + ':' + files[-1].split('line ')[1].split(',')[0] if files else '--config'
      fail(f'{where}: cannot load the config: {text.strip().splitlines()[-1]}')
    fail(text)
  except Exception as e:  # pylint: disable=broad-except
    # ml_collections loads a --config file while parsing: its errors and a bad --config.x=... land here.
    key = _config_key_error(argv)
    if key:
      fail(key)
    reason = e.msg if isinstance(e, SyntaxError) else (str(e).splitlines() or [type(e).__name__])[-1]
    fail(f'{_where(e)}: cannot load the config: {type(e).__name__}: {reason}')


def start(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
  """app.run(main) for an entry point: --help exits 0 (absl exits 1), flag mistakes are one line."""
  argv = list(sys.argv if argv is None else argv)
  # --help lists the key flags of the script that was run and prints its docstring; for a console script or
  # a thin wrapper that is not the module defining the flags, so adopt them.
  module = sys.modules[main.__module__]
  for flag in flags.FLAGS.get_key_flags_for_module(module.__name__):
    flags.FLAGS.register_key_flag_for_module(argv[0], flag)
  main_module = sys.modules.get('__main__')
  if main_module is not None and main_module is not module:
    main_module.__doc__ = module.__doc__
  asked_help = any(a.split('=', 1)[0] in HELP_FLAGS for a in argv[1:argv.index('--') if '--' in argv else None])
  try:
    app.run(main, argv=argv, flags_parser=_parse_flags)
  except SystemExit as e:
    if asked_help and e.code == 1:
      sys.exit(0)
    raise


def no_arguments(argv: Sequence[str]) -> None:
  """Refuses positional arguments (every input is a flag)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')


def quiet_logs() -> None:
  """Library logs (Orbax, JAX, XLA) at WARNING unless --verbosity/-v was given, so the bar stays readable."""
  if flags.FLAGS['verbosity'].present:
    return
  logging.set_verbosity(logging.WARNING)
  for name in ('jax', 'absl', 'orbax'):
    std_logging.getLogger(name).setLevel(std_logging.WARNING)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # XLA's C++ INFO lines, read when jax starts


def show_info() -> None:
  """Routes this library's INFO records (the notices a user should see) to stderr as plain lines."""
  logger = std_logging.getLogger('raftdvc_jax')
  if not any(getattr(h, '_raftdvc_cli', False) for h in logger.handlers):
    handler = std_logging.StreamHandler(sys.stderr)
    handler.setFormatter(std_logging.Formatter('%(message)s'))
    handler._raftdvc_cli = True  # pylint: disable=protected-access
    logger.addHandler(handler)
  logger.setLevel(std_logging.INFO)
  logger.propagate = False  # absl's handler would print it a second time, with a prefix


def load_config(holder, flag_name: str = 'config'):
  """The ml_collections config of a config_flags flag; a broken file is one line with the file and line."""
  path = flags.FLAGS[flag_name].config_filename
  try:
    config = holder.value
    config.get('train')  # config_flags defers a load failure to the first use
    return config
  except SyntaxError as e:
    fail(f'{e.filename}:{e.lineno}: --{flag_name} is not valid Python: {e.msg}')
  except Exception as e:  # pylint: disable=broad-except
    frames = [f for f in traceback.extract_tb(e.__traceback__) if path and os.path.abspath(f.filename) ==
              os.path.abspath(path)]
    where = f'{path}:{frames[-1].lineno}' if frames else path
    reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1:] or [type(e).__name__]
    fail(f'{where}: cannot load --{flag_name}: {reason[0]}')


# ---------------------------------------------------------------------------------------------------------
# Outputs: checked before any compute, never overwritten without --overwrite.


def check_writable(path: str, what: str = 'output', folder: bool = False) -> None:
  """Refuses an output path that could not be written: a directory (or, for a folder, a file), or a path
  under a file or a read-only folder."""
  path = os.path.abspath(path)
  if folder and os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'{path}: the {what} is not a directory')
  if not folder and os.path.isdir(path):
    raise ValueError(f'{path}: the {what} is a directory')
  if not folder and os.path.exists(path) and not os.path.isfile(path):
    raise ValueError(f'{path}: the {what} is not a regular file (a device or pipe cannot take an atomic write)')
  parent = path if folder else os.path.dirname(path)
  while not os.path.exists(parent):  # atomic_path creates missing folders; the first existing one must allow it
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f'{path}: cannot write the {what}: {parent} is not a directory')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f'{path}: cannot write the {what}: {parent} is not writable')


def check_new_output(path: str, overwrite: bool, what: str = 'output') -> None:
  """check_writable, and refuses an existing file unless `overwrite` (so a result is never lost silently)."""
  check_writable(path, what)
  if os.path.exists(path) and not overwrite:
    raise ValueError(f'{path}: the {what} exists; pass --overwrite to replace it')


def check_output_format(path: str) -> None:
  """Refuses a flow or volume output whose suffix no writer takes, or whose writer is not installed."""
  from raftdvc_jax.data import io  # pylint: disable=import-outside-toplevel
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in io.VOLUME_SUFFIXES:
    raise ValueError(f'{path}: cannot write a flow as {suffix or "a file without suffix"!r}; '
                     f'use one of {", ".join(io.VOLUME_SUFFIXES)}')
  if suffix in ('.h5', '.hdf5'):
    try:
      import h5py  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      raise ValueError(f'{path}: writing {suffix} needs h5py (pip install h5py)') from None
