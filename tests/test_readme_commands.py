"""Every command README.md shows, run as a subprocess from a temporary folder, as a new user would.

README's fenced ```bash and ```python blocks are read here; COMMANDS maps each command to how this module
runs it. A command in README with no entry (or an entry README no longer shows) fails the first test, so
when README changes, this module changes with it. Each command keeps its flags as written; where the
command as written would run for minutes (training), flags are appended to cut it to a few steps, and the
placeholders (CKPT, ref.tif, best_model.pth) are files made here. `python X.py` and `configs/` refer to the
checkout, which is not the working directory.
Every shipped weight name also runs through infer.py and the raftdvc-infer console script, with and
without --refine.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from raftdvc_jax import weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600
# Training commands as written run for minutes to days; these make them a few tiny steps.
SHORT_TRAINING = ('--config.train.num_steps=2 --config.train.batch_size=1 --config.train.grad_accum=1 '
                  '--config.data.synthetic.size=16 --config.data.val_size=1 --config.data.num_workers=1 '
                  '--config.model.iters=1 --config.train.log_every=1 --config.train.eval_every=2 '
                  '--config.train.checkpoint_every=2')


def readme_commands() -> list[str]:
  """The commands in README.md's ```bash blocks (continuations joined, comments dropped) and its ```python
  blocks (each block one program)."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  commands = []
  for lang, body in re.findall(r'^```(\w*)\n(.*?)^```', text, flags=re.S | re.M):
    if lang == 'python':
      commands.append(body.strip())
    elif lang == 'bash':
      for line in body.replace('\\\n', ' ').splitlines():
        line = re.sub(r'\s+#.*$', '', line).strip()
        if line:
          commands.append(re.sub(r'\s+', ' ', line))
  return commands


# README command -> what this module runs: 'ci' (the test command itself: .ci/run runs it), or a shell
# line in which {py} is this Python, {bin} its folder of console scripts, {root} the checkout and {ckpt} a
# small converted checkpoint.
COMMANDS = {
    'pip install -e . && python infer.py --demo': '{py} {root}/infer.py --demo',
    "pip install -e '.[test]' && python -m pytest tests": 'ci',
    'python infer.py --checkpoint CKPT --vol0 ref.tif --vol1 def.tif --output flow.npy':
        '{py} {root}/infer.py --checkpoint {ckpt} --vol0 ref.tif --vol1 def.tif --output flow.npy',
    'python infer.py --checkpoint CKPT --vol0 ref.tif --vol1 def.tif --output flow.npy --tile 64 --overlap 0.5':
        '{py} {root}/infer.py --checkpoint {ckpt} --vol0 ref.tif --vol1 def.tif --output flow.npy --tile 64 '
        '--overlap 0.5',
    'python infer.py --coarse_checkpoint s8-starter --checkpoint s4-starter --vol0 ref.tif --vol1 def.tif '
    '--output flow.npy': '{py} {root}/infer.py --coarse_checkpoint s8-starter --checkpoint s4-starter --vol0 ref.tif '
                         '--vol1 def.tif --output flow.npy',
    'python infer.py --vol0 ref.tif --vol1 def.tif --output flow.npy --refine':
        '{py} {root}/infer.py --vol0 ref.tif --vol1 def.tif --output flow.npy --refine',
    'python infer.py --checkpoint CKPT --vol0 ref.tif --vol1 def.tif --output flow.npy --refine --strain '
    '--voxel_size 2.5,1.2,1.2 --unit um --formats npz,vti,tsv --figures':
        '{py} {root}/infer.py --checkpoint {ckpt} --vol0 ref.tif --vol1 def.tif --output flow.npy --refine '
        '--strain --voxel_size 2.5,1.2,1.2 --unit um --formats npz,vti,tsv --figures',
    'raftdvc-analyze --flow flow.npy --output strain/ --voxel_size 2.5,1.2,1.2 --unit um':
        '{bin}/raftdvc-analyze --flow flow.npy --output strain/ --voxel_size 2.5,1.2,1.2 --unit um',
    'raftdvc-convert --checkpoint best_model.pth --output s4_converted --verify':
        '{bin}/raftdvc-convert --checkpoint best_model.pth --output s4_converted --verify',
    'python train.py --config=configs/smoke.py --workdir=/tmp/raftdvc_smoke':
        '{py} {root}/train.py --config={root}/configs/smoke.py --workdir=raftdvc_smoke '
        '--config.train.loss.match_warmup=1 ' + SHORT_TRAINING,
    'python train.py --config=configs/s4_starter.py:translation --workdir=runs/s4_tr':
        '{py} {root}/train.py --config={root}/configs/s4_starter.py:translation --workdir=runs/s4_tr '
        + SHORT_TRAINING,
    'python train.py --config=configs/s4_starter.py:mix --workdir=runs/s4_mix --config.init_from=runs/s4_tr':
        '{py} {root}/train.py --config={root}/configs/s4_starter.py:mix --workdir=runs/s4_mix '
        '--config.init_from=runs/s4_tr ' + SHORT_TRAINING,
    'python train.py --config=configs/raftdvc.py:s4 --workdir=runs/s4':
        '{py} {root}/train.py --config={root}/configs/raftdvc.py:s4 --workdir=runs/s4 ' + SHORT_TRAINING,
    'import raftdvc_jax\n'
    "estimator = raftdvc_jax.load('CKPT')\n"
    'flow = estimator(vol0, vol1)                           # (3, X0, X1, X2), whole volume\n'
    'flow = estimator.tiled(vol0, vol1, tile=64, overlap=0.5)  # large volumes': 'python',
}


def test_every_readme_command_is_run_here():
  shown = readme_commands()
  assert len(shown) == len(set(shown))
  assert sorted(shown) == sorted(COMMANDS), (
      f'in README, not here: {sorted(set(shown) - set(COMMANDS))}; here, not in README: '
      f'{sorted(set(COMMANDS) - set(shown))}')


def test_the_readme_test_command_is_what_ci_runs():
  with open(os.path.join(ROOT, '.ci', 'run')) as f:
    ci = f.read()
  assert "pip install --quiet -e '.[test]'" in ci and '\npython -m pytest tests\n' in ci


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """A working folder outside the checkout with the README's inputs: ref.tif/def.tif (a bead pair with a
  known sub-voxel translation), a tiny converted CKPT, a RAFT-DVC best_model.pth; and a compilation cache."""
  import tifffile  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.convert import orbax_io  # pylint: disable=import-outside-toplevel
  from raftdvc_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  from tests.convert import test_convert  # pylint: disable=import-outside-toplevel
  from tests.infer import test_distributed  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp('user')
  pair = synthetic.make_pair(synthetic.SyntheticConfig(size=32, particle_radius=2.0, density=6.0, disp_min=1.2,
                                                       disp_max=1.8, deformation='translation'), 5)
  tifffile.imwrite(root / 'ref.tif', pair['I1'])
  tifffile.imwrite(root / 'def.tif', pair['I2'])
  np.save(root / 'truth.npy', pair['flow'])
  np.save(root / 'zeros.npy', np.zeros_like(pair['flow']))  # predicting no motion, the baseline
  ckpt = orbax_io.save(str(root / 'ckpt'), test_distributed.tiny_model_config(), test_distributed.tiny_variables())
  import torch  # pylint: disable=import-outside-toplevel
  torch.save({'model_state_dict': test_convert.reference(test_convert.S4, seed=1).state_dict(),
              'model_config': test_convert.raftdvc_model_config(test_convert.S4), 'epoch': 5},
             root / 'best_model.pth')  # RAFT-DVC's best_model.pth layout
  return root, ckpt, str(tmp_path_factory.mktemp('cache'))


def run_here(line, folder, extra_env=None, timeout=TIMEOUT):
  root, ckpt, cache = folder
  args = shlex.split(line.format(py=sys.executable, root=ROOT, ckpt=ckpt, bin=os.path.dirname(sys.executable)))
  # Tiny volumes: XLA's optimisation passes cost more time than they save (as in conftest.py).
  env = dict(os.environ, RAFTDVC_JAX_CACHE=cache, JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1',
             **(extra_env or {}))
  env.pop('PYTHONPATH', None)  # the installed package, not the checkout on the path
  return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def run_readme(command, folder):
  run = run_here(COMMANDS[command], folder)
  assert run.returncode == 0, f'{command}\n{run.stderr[-3000:]}'
  return run


def node_epe(folder, flow_file='flow.npy', margin=10):
  flow, truth = np.load(folder[0] / flow_file), np.load(folder[0] / 'truth.npy')
  inner = (slice(None),) + (slice(margin, -margin),) * 3
  return float(np.sqrt(np.square(flow - truth)[inner].sum(0)).mean())


def test_demo(folder):
  run = run_readme('pip install -e . && python infer.py --demo', folder)
  out = run.stdout
  epe = float(out.split('EPE mean ')[1].split(',')[0])
  baseline = float(out.split('predicting no motion: ')[1].split(')')[0])
  assert 'synthetic 64x64x64 bead pair' in out and 'seed 0' in out
  assert 0 < epe < 0.5 * baseline, out  # the shipped weights measure
  assert 'no better than predicting no motion' not in out
  assert f'figure: demo_flow.png' in out
  assert (folder[0] / 'demo_flow.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # s4-starter records the 64^3 tiles it was trained on; without --tile the demo uses them and says so.
  assert f'fine arm {weights.DEFAULT}' in run.stderr
  assert 'tiles of 64 (overlap 0.5): what these weights were trained for' in run.stderr
  assert '1 tiles of 64x64x64' in run.stderr
  os.remove(folder[0] / 'demo_flow.png')


def test_infer_refine_strain_and_analyze(folder):
  """The inference commands in README's order: each writes its flow, refused again without --overwrite."""
  root = folder[0]
  for command in [c for c in COMMANDS if c.startswith(('python infer.py --checkpoint CKPT', 'python infer.py --coarse'))
                  and '--refine' not in c]:
    run_readme(command, folder)
    assert np.load(root / 'flow.npy').shape == (3, 32, 32, 32)
    again = run_here(COMMANDS[command], folder)
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1].startswith('error: flow.npy')
    os.remove(root / 'flow.npy')
  run_readme('python infer.py --vol0 ref.tif --vol1 def.tif --output flow.npy --refine', folder)
  assert node_epe(folder) < 0.05  # no motion is above 1.2
  for name in ('flow.npy', 'flow_nodes.npz'):
    os.remove(root / name)
  run_readme([c for c in COMMANDS if '--strain' in c][0], folder)
  for name in ('strain.npz', 'strain.vti', 'spam.tsv', 'report.png'):
    assert (root / 'flow_strain' / name).stat().st_size > 0, name
  run_readme('raftdvc-analyze --flow flow.npy --output strain/ --voxel_size 2.5,1.2,1.2 --unit um', folder)
  assert os.listdir(root / 'strain')
  for name in ('flow.npy', 'flow_nodes.npz', 'flow_strain', 'strain'):
    shutil.rmtree(root / name) if os.path.isdir(root / name) else os.remove(root / name)


def test_python_snippet(folder):
  snippet = next(c for c in COMMANDS if COMMANDS[c] == 'python')
  program = ('import numpy as np, tifffile\n'
             "vol0, vol1 = tifffile.imread('ref.tif'), tifffile.imread('def.tif')\n"
             + snippet.replace('CKPT', folder[1]) + '\nassert flow.shape == (3, 32, 32, 32)\n')
  run = run_here(f'{{py}} -c {shlex.quote(program)}', folder)
  assert run.returncode == 0, run.stderr[-3000:]


def test_convert(folder):
  run = run_readme('raftdvc-convert --checkpoint best_model.pth --output s4_converted --verify',
                   folder)
  assert re.search(r'verify: max \|flow_jax - flow_torch\| = \S+ voxel .*: ok', run.stderr), run.stderr
  assert os.path.isfile(folder[0] / 's4_converted' / 'model_config.json')


def test_training_commands(folder):
  root = folder[0]
  for command in [c for c in COMMANDS if c.startswith('python train.py')]:
    run_readme(command, folder)
    workdir = re.search(r'--workdir=(\S+)', COMMANDS[command]).group(1)
    assert os.listdir(root / workdir / 'checkpoints') == ['2'], command
  # the mix phase started from the translation phase's weights
  with open(root / 'runs' / 's4_mix' / 'config.json') as f:
    assert '"init_from": "runs/s4_tr"' in f.read()


@pytest.mark.parametrize('command', ['python infer.py', 'raftdvc-infer'])
@pytest.mark.parametrize('refine', [False, True], ids=['network', 'refine'])
@pytest.mark.parametrize('name', sorted(weights.NAMES))
def test_shipped_weights_by_name_on_the_command_line(folder, name, command, refine):
  script = shutil.which('raftdvc-infer', path=os.path.dirname(sys.executable)) if command == 'raftdvc-infer' else None
  prefix = script if script else f'{{py}} {{root}}/infer.py'
  assert script or command == 'python infer.py', 'raftdvc-infer is not installed beside this Python'
  out = f'{name}_{command.split()[-1]}_{refine}.npy'
  run = run_here(f'{prefix} --checkpoint {name} --vol0 ref.tif --vol1 def.tif --output {out}'
                 + (' --refine' if refine else ''), folder)
  assert run.returncode == 0, run.stderr[-3000:]
  assert f'fine arm {name}' in run.stderr
  epe, still = node_epe(folder, out), node_epe(folder, 'zeros.npy')
  assert epe < (0.05 if refine else 0.9 * still), (epe, still)  # every arm beats no motion; refined, 0.05
