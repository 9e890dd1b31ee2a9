"""Converter: every checkpoint layout converts to a model that matches PyTorch; broken or hostile files are refused."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from scipy import ndimage

import raftdvc_jax
from raftdvc_jax.convert import run as convert_run
from tests.scripts import script
from raftdvc_jax.convert import orbax_io
from raftdvc_jax.convert import sources
from raftdvc_jax.model.config import ModelConfig, preset

from raftdvc_jax.reference import torch_raft as ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = (16, 24, 20)         # stride <= 4: feature grids 8x12x10 / 4x6x5
VOLRAFT_SIZE = (32, 40, 48)  # stride 8 with two levels: 4x5x6 and 2x2x3
ITERS = 2
S4 = preset('s4').replace(iters=ITERS)
VOLRAFT_SMALL = preset('volraft_120').replace(corr_levels=2, iters=ITERS)


# ------------------------------------------------------------------------------------------ source writers


def raftdvc_model_config(cfg: ModelConfig, sampler_version=2) -> dict:
  """RAFT-DVC's 21-key model_config (RAFTDVCConfig.to_dict()) for a config; None drops corr_sampler_version."""
  d = dict(input_channels=cfg.input_channels, encoder_type=cfg.encoder_type, feature_dim=cfg.feature_dim,
           encoder_norm=cfg.encoder_norm, encoder_dropout=0.0, hidden_dim=cfg.hidden_dim,
           context_dim=cfg.context_dim, context_norm=cfg.context_norm, context_dropout=0.0,
           corr_levels=cfg.corr_levels, corr_radius=cfg.corr_radius, corr_impl='standard', corr_chunk_size=27,
           corr_use_checkpoint=True, corr_sampler_version=sampler_version, use_sep_conv=cfg.gru == 'sep',
           checkpoint_updates=False, checkpoint_corr=False, iters=cfg.iters, mixed_precision=False,
           uncertainty_mode=cfg.uncertainty)
  if sampler_version is None:
    del d['corr_sampler_version']
  assert len(d) == 21 or sampler_version is None
  return d


def reference(cfg: ModelConfig, seed=0):
  return ref.init_weights(ref.build(cfg.to_dict()), seed)


def trainer_checkpoint(model, cfg, sampler_version=2):
  """What RAFT-DVC's Trainer writes as latest.pth / checkpoint_epoch_NNNN.pth."""
  opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=5e-5)
  sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-4, total_steps=100, pct_start=0.2,
                                              anneal_strategy='cos', cycle_momentum=False)
  return {'model_state_dict': model.state_dict(), 'model_config': raftdvc_model_config(cfg, sampler_version),
          'epoch': 7, 'optimizer_state_dict': opt.state_dict(), 'scheduler_state_dict': sched.state_dict(),
          'global_step': 1750, 'best_val_loss': 0.25, 'training_config': {'epochs': 300, 'max_lr': 2e-4}}


def volraft_yaml(cfg: ModelConfig) -> str:
  """The keys of VolRAFT's volraft_config_120.yaml (network part and a few training keys)."""
  return (f'patch_xyz: null\nflow_shape: [60, 80, 80]\nepochs: 10000\nlr: 0.00002\noptimizer_type: "AdamW"\n'
          f'optimizer_eps: 1e-8\noptimizer_weight_decay: 0.00005\nnetwork_name: "volraft"\niters: {cfg.iters}\n'
          f'corr_levels: {cfg.corr_levels}\ncorr_radius: {cfg.corr_radius}\ngradient_norm_clip: 1.0\n'
          'proj_max_flow: 24.0\nloss_type: "RAFTLoss"\nloss_gamma: 0.8\nseed: 42\nminibatch_size: 18\n')


def write_volraft_upstream(folder, model, cfg):
  """model_epochNNNNNN.pt + config_*.yaml as VolRAFT's CheckpointController keeps them."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, 'model_epoch000100.pt')
  opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
  torch.save({'epoch': 100, 'patch_shape': (18, 1, 60, 80, 80), 'flow_shape': [18, 3, 60, 80, 80],
              'network_state_dict': model.state_dict(), 'optimizer_state_dict': opt.state_dict(),
              'scheduler_state_dict': {'base_lrs': [2e-5], 'last_epoch': 100},
              'loss_list_train': np.zeros((4, 3), np.float32), 'loss_list_valid': np.ones((4, 2), np.float32)},
             path)
  with open(os.path.join(folder, 'config_20240119_184617_980292.yaml'), 'w') as f:
    f.write(volraft_yaml(cfg))
  return path


def port_checkpoint(model, cfg, network_name):
  """RAFT-DVC's volraft_{asreleased,fixed}_best.pth: best_model format with VolRAFT's ARCH dict."""
  arch = {'network_name': network_name, 'small': True, 'corr_levels': cfg.corr_levels,
          'corr_radius': cfg.corr_radius, 'iters': cfg.iters, 'proj_max_flow': 24.0, 'fnet_output_dim': 128,
          'hidden_dim': 96, 'context_dim': 64, 'sampler': 'fixed: exact vol[h,w,d]'}
  return {'model_state_dict': model.state_dict(), 'model_config': arch, 'epoch': 295}


def pair(size, seed=0):
  rng = np.random.default_rng(seed)
  vol0 = ndimage.gaussian_filter(rng.random(size), 1.0).astype(np.float32)
  return vol0, np.roll(vol0, (1, -1, 2), axis=(0, 1, 2))


def assert_parity(estimator, model, size, iters=ITERS):
  vol0, vol1 = pair(size)
  got = estimator(vol0, vol1, iters=iters)
  with torch.no_grad():
    want = model(torch.from_numpy(vol0)[None, None], torch.from_numpy(vol1)[None, None], iters=iters)[-1][0].numpy()
  assert got.shape == (3, *size) and got.dtype == np.float32
  scale = np.abs(want).max()
  assert scale > 0.05  # a real flow, not a collapsed one
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 + 2e-5 * scale)


@pytest.fixture(scope='module')
def s4_model():
  return reference(S4, seed=1)


@pytest.fixture(scope='module')
def s4_file(tmp_path_factory, s4_model):
  path = str(tmp_path_factory.mktemp('s4') / 'latest.pth')
  torch.save(trainer_checkpoint(s4_model, S4), path)
  return path


# ------------------------------------------------------------------------------------------- parity per kind


def test_raftdvc_trainer_checkpoint_through_orbax(tmp_path, s4_file, s4_model):
  source = sources.load_source(s4_file)
  assert source.kind == 'raftdvc' and source.config == S4
  assert source.meta == {'epoch': 7, 'global_step': 1750, 'best_val_loss': 0.25}
  out = orbax_io.save(str(tmp_path / 'conv'), source.config, sources.to_variables(source), source.provenance())
  assert sorted(os.listdir(tmp_path)) == ['conv']  # no temporary directory left behind
  with open(os.path.join(out, 'provenance.json')) as f:
    prov = json.load(f)
  assert prov['kind'] == 'raftdvc' and prov['source'] == 'latest.pth'
  assert prov['source_sha256'] == sources.sha256(s4_file) and prov['library_version'] == raftdvc_jax.__version__
  estimator = raftdvc_jax.load(out)
  assert estimator.config == S4
  assert_parity(estimator, s4_model, SIZE)
  # The file converted in memory gives the same numbers as the directory.
  vol0, vol1 = pair(SIZE)
  np.testing.assert_array_equal(raftdvc_jax.load(s4_file)(vol0, vol1), estimator(vol0, vol1))


def test_raftdvc_legacy_best_model(tmp_path):
  cfg = preset('s2').replace(iters=ITERS, sampler='raftdvc_v1')
  model = reference(cfg, seed=2)
  path = str(tmp_path / 'best_model.pth')
  torch.save({'model_state_dict': model.state_dict(), 'model_config': raftdvc_model_config(cfg, None),
              'epoch': 120}, path)
  source = sources.load_source(path)
  assert source.config == cfg  # no corr_sampler_version -> the legacy W<->D sampler
  assert any('legacy' in note and 'corr_sampler_version' in note for note in source.notes)
  assert_parity(raftdvc_jax.load(path), model, SIZE)


def test_dataparallel_legacy_serialization(tmp_path, s4_model):
  ckpt = trainer_checkpoint(s4_model, S4)
  ckpt['model_state_dict'] = {'module.' + k: v for k, v in ckpt['model_state_dict'].items()}
  path = str(tmp_path / 'dp.pth')
  torch.save(ckpt, path, _use_new_zipfile_serialization=False)
  source = sources.load_source(path)
  assert source.config == S4 and any('DataParallel' in n for n in source.notes)
  assert set(source.state_dict) == set(s4_model.state_dict())
  assert_parity(raftdvc_jax.load(path), s4_model, SIZE)


def test_bare_state_dict_needs_encoder_type(tmp_path, s4_model):
  path = str(tmp_path / 'weights.pth')
  torch.save(s4_model.state_dict(), path)
  with pytest.raises(ValueError, match='--encoder_type') as e:
    sources.load_source(path)
  assert str(e.value).startswith(path)
  source = sources.load_source(path, encoder_type='1/4')
  assert source.kind == 'state_dict'
  assert source.config == S4.replace(iters=12)  # iters is not in the weights: RAFT-DVC's default
  assert_parity(raftdvc_jax.load(path, encoder_type='1/4'), s4_model, SIZE)


@pytest.fixture(scope='module')
def volraft_small():
  return reference(VOLRAFT_SMALL, seed=3)


def test_volraft_upstream_with_yaml_beside(tmp_path, volraft_small):
  path = write_volraft_upstream(str(tmp_path), volraft_small, VOLRAFT_SMALL)
  source = sources.load_source(path)
  assert source.kind == 'volraft' and source.config == VOLRAFT_SMALL
  assert source.meta == {'epoch': 100, 'patch_shape': [18, 1, 60, 80, 80], 'flow_shape': [18, 3, 60, 80, 80]}
  assert any('config_20240119_184617_980292.yaml' in n for n in source.notes)
  assert_parity(raftdvc_jax.load(path), volraft_small, VOLRAFT_SIZE)


@pytest.mark.parametrize('name, sampler', [('volraft_asreleased', 'volraft'), ('volraft_fixed', 'exact')])
def test_volraft_ports(tmp_path, name, sampler):
  cfg = VOLRAFT_SMALL.replace(sampler=sampler)
  model = reference(cfg, seed=4)
  path = str(tmp_path / f'{name}_best.pth')
  torch.save(port_checkpoint(model, cfg, name), path)
  source = sources.load_source(path)
  assert source.kind == 'volraft_port' and source.config == cfg
  assert_parity(raftdvc_jax.load(path), model, VOLRAFT_SIZE)


def test_volraft_120_four_levels(tmp_path):
  # The released config at the smallest non-cubic size whose coarsest level keeps a voxel (grid 8x8x9).
  cfg = preset('volraft_120').replace(iters=ITERS)
  model = reference(cfg, seed=5)
  path = write_volraft_upstream(str(tmp_path), model, cfg)
  assert sources.load_source(path).config == cfg
  assert_parity(raftdvc_jax.load(path), model, (64, 64, 72))


def test_detects_config_fields_of_variants(tmp_path):
  # ConvGRU, four levels, uncertainty head and affine norms are read from model_config and checked
  # against the weights, without running the network.
  cfg = preset('raftdvc_1_8_p4').replace(gru='conv', uncertainty='mol', encoder_norm='group', iters=4)
  ckpt = {'model_state_dict': reference(cfg).state_dict(), 'model_config': raftdvc_model_config(cfg), 'epoch': 1}
  path = str(tmp_path / 'variant.pth')
  torch.save(ckpt, path)
  assert sources.load_source(path).config == cfg
  torch.save(ckpt['model_state_dict'], path)
  bare = sources.load_source(path, encoder_type='1/8')
  assert bare.config == cfg.replace(iters=12)


# --------------------------------------------------------------------------------------- refusals (library)


class _Evil:
  """Pickles as a call of `fn(*args)`; unpickling it with the real pickle would run it."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


def _evil_payloads(marker):
  import builtins  # pylint: disable=import-outside-toplevel
  import subprocess as sp  # pylint: disable=import-outside-toplevel
  return {
      'os.system': _Evil(os.system, f'touch {marker}'),
      'builtins.eval': _Evil(builtins.eval, f'open({marker!r}, "w").close()'),
      'subprocess': _Evil(sp.call, ['touch', marker]),
  }


def _zip_checkpoint(path, obj):
  """A torch.save-shaped zip whose data.pkl is the plain pickle of obj."""
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps(obj, protocol=2))
    z.writestr('archive/version', '3\n')
    z.writestr('archive/byteorder', 'little')


@pytest.mark.parametrize('payload', ['os.system', 'builtins.eval', 'subprocess'])
@pytest.mark.parametrize('container', ['zip', 'legacy'])
def test_hostile_pickles_are_refused_and_not_run(tmp_path, payload, container):
  marker = str(tmp_path / 'pwned')
  evil = {'model_state_dict': _evil_payloads(marker)[payload], 'model_config': {}}
  path = str(tmp_path / 'evil.pth')
  if container == 'zip':
    _zip_checkpoint(path, evil)
  else:
    with open(path, 'wb') as f:
      pickle.dump(evil, f, protocol=2)
  for load in (sources.load_source, raftdvc_jax.load):
    with pytest.raises(ValueError, match='refused global') as e:
      load(path)
    assert str(e.value).startswith(path) and '\n' not in str(e.value)
  assert not os.path.exists(marker)


def _broken_files(tmp_path, s4_file, s4_model):
  """name -> (path, expected message fragment) for every kind of unusable file."""
  data = open(s4_file, 'rb').read()
  files = {}

  def write(name, content):
    path = str(tmp_path / f'{name}.pth')
    with open(path, 'wb') as f:
      f.write(content)
    return path

  def save(name, obj):
    path = str(tmp_path / f'{name}.pth')
    torch.save(obj, path)
    return path

  files['empty'] = write('empty', b''), 'empty file'
  files['garbage'] = write('garbage', np.random.default_rng(0).bytes(4096)), 'not a PyTorch checkpoint'
  files['truncated'] = write('truncated', data[:len(data) // 2]), 'corrupt or truncated'
  files['unknown_layout'] = save('unknown', {'weights': [1, 2], 'name': 'x'}), 'unknown layout'
  sd = dict(s4_model.state_dict())
  mc = raftdvc_model_config(S4)
  missing = {k: v for k, v in sd.items() if k != 'update_block.flow_head.conv2.bias'}
  files['missing'] = save('missing', {'model_state_dict': missing, 'model_config': mc}), '1 missing'
  files['unexpected'] = save('unexpected', {'model_state_dict': {**sd, 'fnet.extra.weight': torch.zeros(3)},
                                            'model_config': mc}), '1 unexpected (e.g. fnet.extra.weight)'
  misshaped = {**sd, 'update_block.flow_head.conv1.weight': torch.zeros(128, 96, 3, 3, 1)}
  files['misshaped'] = save('misshaped', {'model_state_dict': misshaped, 'model_config': mc}), 'mis-shaped'
  files['levels'] = (save('levels', {'model_state_dict': sd, 'model_config': {**mc, 'corr_levels': 3}}),
                     'disagrees with the weights: corr_levels=3')
  files['gru'] = (save('gru', {'model_state_dict': sd, 'model_config': {**mc, 'use_sep_conv': False}}),
                  'ConvGRU (use_sep_conv false) but the weights hold a SepConvGRU')
  files['encoder'] = (save('encoder', {'model_state_dict': sd, 'model_config': {**mc, 'encoder_type': '1/16'}}),
                      "encoder_type '1/16' is not one of")
  files['sampler'] = (save('sampler', {'model_state_dict': sd, 'model_config': {**mc, 'corr_sampler_version': 3}}),
                      'corr_sampler_version must be 1 or 2')
  files['tensor_config'] = (save('not_sd', {'model_state_dict': {'fnet.conv1.weight': 'x'}, 'model_config': mc}),
                            'non-tensor entries')
  files['port'] = (save('port', {'model_state_dict': sd, 'model_config': {'network_name': 'volraft_fixed'}}),
                   'describes a VolRAFT network but the weights are RAFT-DVC')
  return files


def test_broken_files_are_refused(tmp_path, s4_file, s4_model):
  for name, (path, fragment) in _broken_files(tmp_path, s4_file, s4_model).items():
    with pytest.raises(ValueError) as e:
      raftdvc_jax.load(path)
    message = str(e.value)
    assert message.startswith(path + ':'), (name, message)
    assert fragment in message, (name, message)
    assert '\n' not in message, name


def test_format_and_yaml_mismatches(tmp_path, s4_file, volraft_small):
  with pytest.raises(ValueError, match='--format volraft but the file holds RAFT-DVC weights'):
    sources.load_source(s4_file, fmt='volraft')
  path = write_volraft_upstream(str(tmp_path), volraft_small, VOLRAFT_SMALL)
  bad = str(tmp_path / 'bad.yml')
  with open(bad, 'w') as f:
    f.write(volraft_yaml(VOLRAFT_SMALL.replace(corr_levels=4)))
  with pytest.raises(ValueError, match='VolRAFT config disagrees with the weights: corr_levels=4'):
    sources.load_source(path, volraft_config=bad)
  with open(bad, 'w') as f:
    f.write('network_name: !!python/object/apply:os.system ["touch pwned"]\n')
  with pytest.raises(ValueError, match='not valid YAML'):
    sources.load_source(path, volraft_config=bad)
  with pytest.raises(ValueError, match='sampler to \'volraft\'; --sampler \'exact\' disagrees'):
    sources.load_source(path, sampler='exact')


def test_save_is_atomic(tmp_path, s4_file):
  source = sources.load_source(s4_file)
  variables = sources.to_variables(source)

  def fail(tmp_dir):
    assert os.path.isdir(os.path.join(tmp_dir, 'variables'))
    raise ValueError('verification failed')

  out = str(tmp_path / 'out')
  with pytest.raises(ValueError, match='verification failed'):
    orbax_io.save(out, source.config, variables, before_commit=fail)
  assert os.listdir(tmp_path) == []
  orbax_io.save(out, source.config, variables)
  with pytest.raises(FileExistsError):
    orbax_io.save(out, source.config, variables)
  # A directory whose variables do not fit its config is refused when read.
  with open(os.path.join(out, 'model_config.json'), 'w') as f:
    f.write(source.config.replace(corr_levels=3).to_json())
  with pytest.raises(ValueError, match='variables do not match model_config.json'):
    orbax_io.load_variables(out)


# ------------------------------------------------------------------------------------------------------- CLI


def _cli(*args):
  return subprocess.run([script('raftdvc-convert'), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_refuses_hostile_and_broken_files(tmp_path, s4_file, s4_model):
  marker = str(tmp_path / 'pwned')
  evil = str(tmp_path / 'evil.pth')
  _zip_checkpoint(evil, {'model_state_dict': _evil_payloads(marker)['os.system']})
  broken = _broken_files(tmp_path, s4_file, s4_model)
  for path, fragment in [(evil, 'refused global'), broken['truncated'], broken['levels']]:
    out = str(tmp_path / 'out')
    run = _cli('--checkpoint', path, '--output', out)
    assert run.returncode == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: {path}:') and fragment in last, run.stderr
    assert 'Traceback' not in run.stderr
    assert not os.path.exists(out) and not [n for n in os.listdir(tmp_path) if n.startswith('.out')]
  assert not os.path.exists(marker)


def test_cli_converts(tmp_path, volraft_small):
  path = write_volraft_upstream(str(tmp_path / 'run'), volraft_small, VOLRAFT_SMALL)
  out = str(tmp_path / 'converted')
  run = _cli('--checkpoint', path, '--output', out)
  assert run.returncode == 0, run.stderr
  assert 'detected volraft' in run.stderr and 'Traceback' not in run.stderr
  with open(os.path.join(out, 'model_config.json')) as f:
    assert ModelConfig.from_dict(json.load(f)) == VOLRAFT_SMALL
  with open(os.path.join(out, 'provenance.json')) as f:
    prov = json.load(f)
  assert prov['kind'] == 'volraft' and prov['source'] == 'model_epoch000100.pt'
  assert prov['source_sha256'] == sources.sha256(path)
  # Refuses to replace an existing output unless told to.
  again = _cli('--checkpoint', path, '--output', out)
  assert again.returncode == 1 and 'already exists' in again.stderr
  # --overwrite replaces a converted checkpoint, and nothing else: a folder of user files stays as it is.
  assert _cli('--checkpoint', path, '--output', out, '--overwrite').returncode == 0
  user = tmp_path / 'my_scans'
  user.mkdir()
  (user / 'scan.tif').write_bytes(b'precious')
  (tmp_path / 'notes.txt').write_text('mine')
  for target in (user, tmp_path / 'notes.txt'):
    run = _cli('--checkpoint', path, '--output', str(target), '--overwrite')
    assert run.returncode == 1 and 'replaces only a converted checkpoint' in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f'error: {target}:')
  assert (user / 'scan.tif').read_bytes() == b'precious' and (tmp_path / 'notes.txt').read_text() == 'mine'
  (tmp_path / 'converted' / 'mine.txt').write_text('x')  # a converted checkpoint the user put files into
  run = _cli('--checkpoint', path, '--output', out, '--overwrite')
  assert run.returncode == 1 and 'it also holds mine.txt' in run.stderr, run.stderr
  run = _cli('--help')
  assert run.returncode == 0 and '--[no]overwrite' in run.stdout


def test_verify_compares_with_pytorch(tmp_path, volraft_small):
  # --verify's check, in-process (the CLI runs it on the temporary directory before committing it).
  tool = convert_run
  path = write_volraft_upstream(str(tmp_path), volraft_small, VOLRAFT_SMALL)
  source = sources.load_source(path)
  out = orbax_io.save(str(tmp_path / 'ok'), source.config, sources.to_variables(source))
  assert tool.verify(out, source, VOLRAFT_SIZE, ITERS, seed=0).endswith(': ok')
  # Weights that differ from the source's fail the check.
  other = reference(VOLRAFT_SMALL, seed=9)
  wrong = sources.Source(path, 'volraft', VOLRAFT_SMALL, {k: v.numpy() for k, v in other.state_dict().items()})
  with pytest.raises(ValueError, match='verification failed'):
    tool.verify(out, wrong, VOLRAFT_SIZE, ITERS, seed=0)
  assert tool.verify_size(VOLRAFT_SMALL) == (64, 72, 80)
  assert tool.verify_size(preset('volraft_120')) == (64, 72, 80)


def test_float16_storage_halves_a_directory_and_reads_back_as_float32(tmp_path):
  """How the shipped weights are stored: float16 on disk (rounding <= 4.9e-4 relative), float32 in the model."""
  variables = sources.to_variables(sources.Source('x', 'raftdvc', S4, {
      k: v.numpy() for k, v in reference(S4, seed=3).state_dict().items()}))
  full = orbax_io.save(str(tmp_path / 'f32'), S4, variables)
  half = orbax_io.save(str(tmp_path / 'f16'), S4, variables, storage_dtype='float16')
  size = lambda d: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
  assert size(half) < 0.6 * size(full)
  _, back, prov = orbax_io.load_variables(half)
  assert prov['storage_dtype'] == 'float16'
  for a, b in zip(jax_leaves(variables['params']), jax_leaves(back['params'])):
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, a, rtol=4.9e-4, atol=6e-8)  # float16: 11-bit significand, subnormals below 6e-5
  with pytest.raises(ValueError, match='storage_dtype'):
    orbax_io.save(str(tmp_path / 'bad'), S4, variables, storage_dtype='int8')


def jax_leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.leaves(tree)
