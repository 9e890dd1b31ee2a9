"""Recognises RAFT-DVC and VolRAFT checkpoint layouts and builds the ModelConfig that runs their weights.

Accepted sources (RAFTDVC_REFERENCE.md section 2):

  raftdvc      RAFT-DVC `save_checkpoint` / Trainer files: {'model_state_dict', 'model_config' (21 keys),
               'epoch', ...}. A model_config without `corr_sampler_version` is a checkpoint from before the
               sampler fix and runs with the legacy W<->D sampler ('raftdvc_v1'), as RAFT-DVC itself does.
  volraft      upstream VolRAFT `model_epochNNNNNN.pt`: {'network_state_dict' (module.* keys), 'patch_shape',
               'flow_shape', ...}; its config is a YAML file beside it (or --volraft_config).
  volraft_port VolRAFT ports shipped with RAFT-DVC: a RAFT-DVC Trainer file whose model_config names
               `network_name` 'volraft_asreleased' (VolRAFT's sampler) or 'volraft_fixed' (exact sampler).
  state_dict   a bare state dict. Everything but the encoder stride and the sampler convention can be read
               off the weights; the stride must be given (`encoder_type`), the sampler defaults to the one
               the family shipped with ('exact' for RAFT-DVC, 'volraft' for VolRAFT) unless given.

DataParallel 'module.' prefixes are removed wherever they occur. Every problem raises SourceError (a
ValueError) with one line that names the file.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from raftdvc_jax.model.config import ENCODERS, NORMS, SAMPLERS, ModelConfig, preset

FORMATS = ('auto', 'raftdvc', 'volraft')
KINDS = ('raftdvc', 'volraft', 'volraft_port', 'state_dict')
PORTS = {'volraft_asreleased': 'volraft', 'volraft_fixed': 'exact'}
# RAFTDVCConfig's defaults, used for keys a model_config lacks (RAFT-DVC's from_dict does the same).
RAFTDVC_DEFAULTS = dict(input_channels=1, encoder_type='1/8', feature_dim=128, encoder_norm='instance',
                        hidden_dim=96, context_dim=64, context_norm='none', corr_levels=4, corr_radius=4,
                        use_sep_conv=True, iters=12, uncertainty_mode='none')
# model_config keys that change training or speed but not the function the network computes.
RAFTDVC_NEUTRAL = ('encoder_dropout', 'context_dropout', 'corr_impl', 'corr_chunk_size', 'corr_use_checkpoint',
                   'checkpoint_updates', 'checkpoint_corr', 'mixed_precision')
_MAX_YAML_BYTES = 1 << 20


class SourceError(ValueError):
  """A checkpoint whose layout or config cannot be used; the message names the file."""


@dataclasses.dataclass
class Source:
  """A recognised checkpoint: its config, its state dict under the names mapping.py expects, and notes."""

  path: str
  kind: str                                  # one of KINDS
  config: ModelConfig
  state_dict: dict[str, np.ndarray]
  notes: list[str] = dataclasses.field(default_factory=list)  # what was inferred or ignored, for the log
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # epoch, shapes...: JSON-safe provenance

  def provenance(self) -> dict[str, Any]:
    """JSON-safe description of where the weights came from (name, sha256, kind, notes)."""
    return {'source': os.path.basename(self.path), 'source_sha256': sha256(self.path),
            'source_bytes': os.path.getsize(self.path), 'kind': self.kind, 'notes': list(self.notes),
            'source_meta': dict(self.meta)}


def sha256(path: str) -> str:
  """Hex sha256 of a file, read in blocks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ helpers


def _fail(label: str, problem: str) -> SourceError:
  return SourceError(f'{label}: {problem}')


def _clip(value: Any, limit: int = 120) -> str:
  s = value if isinstance(value, str) else repr(value)
  s = s.encode('unicode_escape').decode('ascii')
  return s if len(s) <= limit else s[:limit] + '...'


def _keys_preview(keys: Sequence[Any], n: int = 6) -> str:
  keys = [str(k) for k in keys]
  return ', '.join(_clip(k, 60) for k in keys[:n]) + (f', ... ({len(keys)} in all)' if len(keys) > n else '')


def _int(label: str, where: str, d: Mapping[str, Any], key: str, default=None, minimum: int = 1) -> int:
  value = d.get(key, default)
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise _fail(label, f'{where} {key} must be an integer, got {_clip(value)}')
  if value < minimum:
    raise _fail(label, f'{where} {key} must be >= {minimum}, got {value}')
  return int(value)


def _choice(label: str, where: str, d: Mapping[str, Any], key: str, choices, default=None) -> str:
  value = d.get(key, default)
  if not isinstance(value, str) or value not in choices:
    raise _fail(label, f'{where} {key} {_clip(repr(value))} is not one of {sorted(choices)}')
  return value


def _json_safe(value: Any, depth: int = 0) -> Any:
  """Plain numbers, strings and short lists of them; anything else is dropped (returns None)."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if np.isfinite(value) else None
  if isinstance(value, str):
    return value[:200]
  if isinstance(value, (list, tuple)) and depth == 0 and len(value) <= 16:
    items = [_json_safe(v, 1) for v in value]
    return items if all(v is not None for v in items) else None
  return None


def _meta(obj: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
  out = {}
  for key in keys:
    if key in obj:
      value = _json_safe(obj[key])
      if value is not None:
        out[key] = value
  return out


# ------------------------------------------------------------------------------------------- state dicts


@dataclasses.dataclass
class _Weights:
  """A state dict with every DataParallel prefix removed, and the network family it belongs to."""

  family: str                     # 'raftdvc' (cnet.encoder.*) or 'volraft' (cnet.* without .encoder)
  core: dict[str, np.ndarray]     # keys without any leading 'module.'
  prefixes: int                   # how many leading 'module.' were removed

  def named_for(self, config: ModelConfig) -> dict[str, np.ndarray]:
    """The state dict under the names mapping.py uses for `config` (module.* for VolRAFT)."""
    if config.volraft:
      return {'module.' + k: v for k, v in self.core.items()}
    return dict(self.core)


def _weights(label: str, sd: Any, what: str) -> _Weights:
  if not isinstance(sd, Mapping):
    raise _fail(label, f'{what} is a {type(sd).__name__}, not a state dict')
  if not sd:
    raise _fail(label, f'{what} is empty')
  bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
  if bad:
    raise _fail(label, f'{what} holds non-tensor entries ({_keys_preview(bad)})')
  core, prefixes = dict(sd), 0
  while all(k.startswith('module.') for k in core):
    core = {k[len('module.'):]: v for k, v in core.items()}
    prefixes += 1
  if 'cnet.encoder.conv1.weight' in core:
    family = 'raftdvc'
  elif 'cnet.conv1.weight' in core:
    family = 'volraft'
  else:
    raise _fail(label, f'{what} is not a RAFT-DVC or VolRAFT network (no fnet/cnet weights such as '
                       f'cnet.encoder.conv1.weight or module.cnet.conv1.weight; keys: {_keys_preview(list(sd))})')
  if 'fnet.conv1.weight' not in core:
    raise _fail(label, f'{what} has no fnet.conv1.weight (keys: {_keys_preview(list(sd))})')
  return _Weights(family, core, prefixes)


def _shape(core: Mapping[str, np.ndarray], key: str) -> Optional[tuple]:
  return tuple(core[key].shape) if key in core else None


def _cnet(w: _Weights) -> str:
  return 'cnet.encoder' if w.family == 'raftdvc' else 'cnet'


def _levels_radius(channels: int) -> list[tuple[int, int]]:
  """(levels, radius) pairs with levels * (2 radius + 1)^3 == channels, in the range any net uses."""
  return [(levels, r) for r in range(1, 9) for levels in range(1, 9) if levels * (2 * r + 1) ** 3 == channels]


def _norm_kind(core: Mapping[str, np.ndarray], net: str) -> Optional[str]:
  """'batch' or 'group' when the net's norms have parameters; None when they are parameter-free."""
  if f'{net}.norm1.running_mean' in core:
    return 'batch'
  if f'{net}.norm1.weight' in core:
    return 'group'
  return None


def _gru_kind(core: Mapping[str, np.ndarray]) -> Optional[str]:
  if 'update_block.gru.convz_h.weight' in core:
    return 'sep'
  if 'update_block.gru.convz.weight' in core:
    return 'conv'
  return None


def _read_fields(label: str, w: _Weights) -> dict[str, Any]:
  """The config fields the weights determine on their own (not the encoder stride nor the sampler)."""
  core, cnet = w.core, _cnet(w)
  need = ['fnet.conv1.weight', 'fnet.conv2.weight', f'{cnet}.conv2.weight', 'update_block.encoder.convc1.weight']
  missing = [k for k in need if k not in core]
  gru = _gru_kind(core)
  if missing or gru is None:
    missing += [] if gru else ['update_block.gru.convz(_h).weight']
    raise _fail(label, f'incomplete state dict: missing {", ".join(missing)}')
  gru_key = 'update_block.gru.convz_h.weight' if gru == 'sep' else 'update_block.gru.convz.weight'
  hidden = core[gru_key].shape[0]
  fields = dict(input_channels=core['fnet.conv1.weight'].shape[1], feature_dim=core['fnet.conv2.weight'].shape[0],
                hidden_dim=hidden, context_dim=core[f'{cnet}.conv2.weight'].shape[0] - hidden, gru=gru,
                corr_channels=core['update_block.encoder.convc1.weight'].shape[1])
  head = _shape(core, 'update_block.uncertainty_head.conv2.weight')
  fields['uncertainty'] = 'none' if head is None else {3: 'nll', 4: 'mol'}.get(head[0], f'{head[0]}-channel')
  fields['encoder_norm'] = _norm_kind(core, 'fnet')
  fields['context_norm'] = _norm_kind(core, cnet)
  return fields


def _check_agrees(label: str, config: ModelConfig, w: _Weights, where: str) -> None:
  """Raises with a readable reason when a config cannot describe the weights (before the strict key check)."""
  if config.volraft != (w.family == 'volraft'):
    has = 'VolRAFT (module.cnet.conv1.weight)' if w.family == 'volraft' else 'RAFT-DVC (cnet.encoder.conv1.weight)'
    says = 'VolRAFT' if config.volraft else 'RAFT-DVC'
    raise _fail(label, f'{where} describes a {says} network but the weights are {has}')
  got = _read_fields(label, w)
  problems = []
  if got['corr_channels'] != config.corr_channels:
    alt = _levels_radius(got['corr_channels'])
    hint = f' (e.g. corr_levels={alt[0][0]}, corr_radius={alt[0][1]})' if alt else ''
    problems.append(f'corr_levels={config.corr_levels}, corr_radius={config.corr_radius} need '
                    f'{config.corr_channels} correlation channels but update_block.encoder.convc1.weight has '
                    f'{got["corr_channels"]}{hint}')
  if got['gru'] != config.gru:
    names = {'sep': 'a SepConvGRU (use_sep_conv true)', 'conv': 'a ConvGRU (use_sep_conv false)'}
    problems.append(f'it asks for {names[config.gru]} but the weights hold {names[got["gru"]]}')
  for field in ('input_channels', 'feature_dim', 'hidden_dim', 'context_dim', 'uncertainty'):
    if got[field] != getattr(config, field):
      problems.append(f'{field}={getattr(config, field)} but the weights have {field}={got[field]}')
  for field in ('encoder_norm', 'context_norm'):
    value = getattr(config, field)
    has_params = value in ('batch', 'group')
    if (got[field] or 'parameter-free') != (value if has_params else 'parameter-free'):
      problems.append(f'{field}={value!r} but the weights have {got[field] or "no"} norm parameters')
  if problems:
    raise _fail(label, f'{where} disagrees with the weights: ' + '; '.join(problems))


# ----------------------------------------------------------------------------------------------- configs


def raftdvc_config(label: str, model_config: Mapping[str, Any], notes: list[str]) -> ModelConfig:
  """ModelConfig of a RAFT-DVC model_config dict (RAFTDVCConfig.to_dict(), 21 keys)."""
  where = 'model_config'
  d = dict(model_config)
  if 'uncertainty_mode' not in d and d.get('predict_uncertainty') is True:
    d['uncertainty_mode'] = 'nll'  # RAFTDVCConfig.from_dict maps the legacy flag the same way
  absent = sorted(k for k in RAFTDVC_DEFAULTS if k not in d)
  if absent:
    notes.append(f'model_config lacks {", ".join(absent)}: using RAFT-DVC defaults')
  d = {**RAFTDVC_DEFAULTS, **d}
  if 'corr_sampler_version' in d:
    version = d['corr_sampler_version']
    if isinstance(version, bool) or version not in (1, 2):
      raise _fail(label, f'{where} corr_sampler_version must be 1 or 2, got {_clip(version)}')
    if version == 1:
      notes.append('corr_sampler_version 1: legacy W<->D sampler (raftdvc_v1)')
  else:
    version = 1
    notes.append('model_config has no corr_sampler_version: a checkpoint from before the sampler fix, '
                 'running it with the legacy W<->D sampler (raftdvc_v1) as RAFT-DVC does')
  if not isinstance(d['use_sep_conv'], (bool, np.bool_)):
    raise _fail(label, f'{where} use_sep_conv must be true or false, got {_clip(d["use_sep_conv"])}')
  if d.get('mixed_precision'):
    notes.append('model_config mixed_precision is true: running in float32 here')
  if d.get('corr_impl', 'standard') != 'standard':
    notes.append(f'corr_impl {_clip(d["corr_impl"])}: computed with the all-pairs correlation (same values)')
  known = set(RAFTDVC_DEFAULTS) | set(RAFTDVC_NEUTRAL) | {'corr_sampler_version', 'predict_uncertainty'}
  unknown = sorted(str(k) for k in d if k not in known)
  if unknown:
    notes.append(f'ignored unknown model_config keys: {", ".join(_clip(k, 40) for k in unknown)}')
  try:
    return ModelConfig(
        encoder_type=_choice(label, where, d, 'encoder_type', ENCODERS),
        input_channels=_int(label, where, d, 'input_channels'),
        feature_dim=_int(label, where, d, 'feature_dim'),
        hidden_dim=_int(label, where, d, 'hidden_dim'),
        context_dim=_int(label, where, d, 'context_dim'),
        encoder_norm=_choice(label, where, d, 'encoder_norm', NORMS),
        context_norm=_choice(label, where, d, 'context_norm', NORMS),
        corr_levels=_int(label, where, d, 'corr_levels'),
        corr_radius=_int(label, where, d, 'corr_radius', minimum=0),
        gru='sep' if d['use_sep_conv'] else 'conv',
        sampler='exact' if version == 2 else 'raftdvc_v1',
        volraft=False,
        uncertainty=_choice(label, where, d, 'uncertainty_mode', ('none', 'nll', 'mol')),
        iters=_int(label, where, d, 'iters'))
  except SourceError:
    raise
  except ValueError as e:
    raise _fail(label, f'{where}: {e}') from None


def _volraft_base(label: str, where: str, d: Mapping[str, Any], sampler: str, notes: list[str]) -> ModelConfig:
  if d.get('should_normalize', True) is not True:
    raise _fail(label, f'{where} should_normalize={_clip(d["should_normalize"])} is not supported '
                       '(the model always normalises the pair to [0, 1])')
  cfg = preset('volraft_120').replace(
      corr_levels=_int(label, where, d, 'corr_levels', 4),
      corr_radius=_int(label, where, d, 'corr_radius', 3, minimum=0),
      iters=_int(label, where, d, 'iters', 12), sampler=sampler)
  absent = [k for k in ('corr_levels', 'corr_radius', 'iters') if k not in d]
  if absent:
    notes.append(f'{where} lacks {", ".join(absent)}: using volraft_config_120 values')
  return cfg


def volraft_yaml_config(label: str, d: Mapping[str, Any], notes: list[str]) -> ModelConfig:
  """ModelConfig of an upstream VolRAFT YAML config (network_name, corr_levels, corr_radius, iters, ...)."""
  where = 'VolRAFT config'
  name = d.get('network_name', 'volraft')
  if name != 'volraft':
    raise _fail(label, f'{where} network_name {_clip(name)} is not VolRAFT (expected "volraft")')
  notes.append('VolRAFT as released: H<->D sampler (volraft), ReLU after norm3, x8 upsampling quirk; '
               'PyTorch ran it under fp16 autocast, this runs float32')
  return _volraft_base(label, where, d, 'volraft', notes)


def port_config(label: str, d: Mapping[str, Any], notes: list[str]) -> ModelConfig:
  """ModelConfig of a RAFT-DVC-shipped VolRAFT port (model_config with network_name volraft_*)."""
  where = 'model_config'
  name = d.get('network_name')
  if name not in PORTS:
    raise _fail(label, f'{where} network_name {_clip(name)} is not a known VolRAFT port ({sorted(PORTS)})')
  if d.get('small', True) is not True:
    raise _fail(label, f'{where} small={_clip(d["small"])}: only the small VolRAFT network exists in 3-D')
  cfg = _volraft_base(label, where, d, PORTS[name], notes)
  cfg = cfg.replace(feature_dim=_int(label, where, d, 'fnet_output_dim', 128),
                    hidden_dim=_int(label, where, d, 'hidden_dim', 96),
                    context_dim=_int(label, where, d, 'context_dim', 64))
  notes.append(f'VolRAFT port {name}: sampler {cfg.sampler} (decided by network_name; the model_config '
               'sampler string is not reliable), ReLU after norm3, x8 upsampling quirk')
  return cfg


def bare_config(label: str, w: _Weights, encoder_type: Optional[str], sampler: Optional[str],
                notes: list[str]) -> ModelConfig:
  """ModelConfig of a bare state dict: fields read off the weights plus the given encoder type/sampler."""
  fields = _read_fields(label, w)
  pairs = _levels_radius(fields['corr_channels'])
  if len(pairs) != 1:
    raise _fail(label, f'cannot tell corr_levels/corr_radius from {fields["corr_channels"]} correlation channels')
  levels, radius = pairs[0]
  if fields['uncertainty'] not in ('none', 'nll', 'mol'):
    raise _fail(label, f'unknown uncertainty head with {fields["uncertainty"]} outputs')
  if w.family == 'volraft':
    if encoder_type not in (None, '1/8'):
      raise _fail(label, f'VolRAFT weights always use the 1/8 encoder, not {encoder_type!r}')
    encoder_type = '1/8'
    sampler = sampler or 'volraft'
    notes.append(f'bare VolRAFT state dict: corr_levels={levels}, corr_radius={radius} from the weights, '
                 f'iters=12, sampler {sampler}' + (' (as released; pass --sampler exact for volraft_fixed '
                                                   'weights)' if sampler == 'volraft' else ''))
  else:
    if encoder_type is None:
      raise _fail(label, 'a bare RAFT-DVC state dict does not say its encoder stride (every encoder_type has the '
                         f'same weights): pass --encoder_type (one of {", ".join(sorted(ENCODERS))})')
    if sampler is None:
      sampler = 'exact'
      notes.append('bare RAFT-DVC state dict: assuming corr_sampler_version 2 (exact sampler); pass '
                   '--sampler raftdvc_v1 for weights trained before the sampler fix (2026-07-12)')
  if encoder_type not in ENCODERS:
    raise _fail(label, f'encoder_type {encoder_type!r} is not one of {sorted(ENCODERS)}')
  if sampler not in SAMPLERS:
    raise _fail(label, f'sampler {sampler!r} is not one of {list(SAMPLERS)}')
  norms = {}
  for field, default in (('encoder_norm', 'instance'), ('context_norm', 'none')):
    norms[field] = fields[field] or default
  if not fields['encoder_norm'] or not fields['context_norm']:
    notes.append('parameter-free norms assumed to be RAFT-DVC\'s usual instance (fnet) / none (cnet)')
  return ModelConfig(encoder_type=encoder_type, input_channels=fields['input_channels'],
                     feature_dim=fields['feature_dim'], hidden_dim=fields['hidden_dim'],
                     context_dim=fields['context_dim'], corr_levels=levels, corr_radius=radius, gru=fields['gru'],
                     sampler=sampler, volraft=w.family == 'volraft', uncertainty=fields['uncertainty'], iters=12,
                     **norms)


# ---------------------------------------------------------------------------------------------- VolRAFT YAML


def read_yaml(path: str) -> dict[str, Any]:
  """Reads a YAML config with yaml.safe_load (no object construction); the top level must be a mapping."""
  import yaml  # pylint: disable=import-outside-toplevel
  try:
    if os.path.getsize(path) > _MAX_YAML_BYTES:
      raise _fail(path, 'YAML config is larger than 1 MiB')
    with open(path, 'rb') as f:
      data = yaml.safe_load(f)
  except yaml.YAMLError as e:
    raise _fail(path, f'not valid YAML ({_clip(str(e).splitlines()[0] if str(e) else type(e).__name__)})') from None
  except UnicodeDecodeError:
    raise _fail(path, 'not a text YAML file') from None
  if not isinstance(data, dict):
    raise _fail(path, f'YAML config must be a mapping, got {type(data).__name__}')
  return data


def find_volraft_yaml(checkpoint: str) -> Optional[str]:
  """The VolRAFT config beside a checkpoint: the lexicographically last *.yaml with corr_levels (as VolRAFT)."""
  folder = os.path.dirname(os.path.abspath(checkpoint))
  names = sorted(glob.glob(os.path.join(glob.escape(folder), '*.yaml')) +
                 glob.glob(os.path.join(glob.escape(folder), '*.yml')))
  for path in reversed(names):
    try:
      data = read_yaml(path)
    except (SourceError, OSError):
      continue
    if 'corr_levels' in data or data.get('network_name') == 'volraft':
      return path
  return None


# ---------------------------------------------------------------------------------------------- detection


def _family_matches(label: str, fmt: str, family: str) -> None:
  if fmt != 'auto' and fmt != family:
    has = 'VolRAFT' if family == 'volraft' else 'RAFT-DVC'
    raise _fail(label, f'--format {fmt} but the file holds {has} weights')


def _given_agrees(label: str, config: ModelConfig, encoder_type, sampler) -> None:
  if encoder_type is not None and encoder_type != config.encoder_type:
    raise _fail(label, f'the checkpoint config says encoder_type {config.encoder_type!r}; '
                       f'--encoder_type {encoder_type!r} disagrees')
  if sampler is not None and sampler != config.sampler:
    raise _fail(label, f'the checkpoint config fixes the sampler to {config.sampler!r}; '
                       f'--sampler {sampler!r} disagrees')


def detect(obj: Any, label: str, fmt: str = 'auto', volraft_config: Optional[Mapping[str, Any]] = None,
           volraft_config_path: Optional[str] = None, encoder_type: Optional[str] = None,
           sampler: Optional[str] = None) -> Source:
  """Recognises an unpickled checkpoint object and builds its Source (config checked against the weights)."""
  if fmt not in FORMATS:
    raise _fail(label, f'unknown format {fmt!r}; choose from {FORMATS}')
  if not isinstance(obj, Mapping):
    raise _fail(label, f'unknown layout: the checkpoint holds a {type(obj).__name__}, not a dict')
  notes: list[str] = []
  if 'network_state_dict' in obj:
    kind, w = 'volraft', _weights(label, obj['network_state_dict'], 'network_state_dict')
    _family_matches(label, fmt, w.family)
    meta = _meta(obj, ('epoch', 'patch_shape', 'flow_shape'))
    if volraft_config is not None:
      notes.append(f'VolRAFT config: {volraft_config_path or "given"}')
      config = volraft_yaml_config(volraft_config_path or label, volraft_config, notes)
      _given_agrees(label, config, encoder_type, sampler)
    else:
      config = bare_config(label, w, encoder_type, sampler, notes)
      notes.append('no VolRAFT YAML config found beside the checkpoint (pass --volraft_config): '
                   'corr_levels/corr_radius read off the weights, iters=12')
  elif 'model_state_dict' in obj:
    w = _weights(label, obj['model_state_dict'], 'model_state_dict')
    _family_matches(label, fmt, w.family)
    model_config = obj.get('model_config', obj.get('config'))
    meta = _meta(obj, ('epoch', 'global_step', 'best_val_loss'))
    if model_config is None:
      kind = 'state_dict'
      notes.append('checkpoint has no model_config')
      config = bare_config(label, w, encoder_type, sampler, notes)
    elif not isinstance(model_config, Mapping):
      raise _fail(label, f'model_config is a {type(model_config).__name__}, not a dict')
    elif str(model_config.get('network_name', '')).startswith('volraft'):
      kind = 'volraft_port'
      config = port_config(label, model_config, notes)
      meta['network_name'] = str(model_config['network_name'])
      _given_agrees(label, config, encoder_type, sampler)
    else:
      kind = 'raftdvc'
      config = raftdvc_config(label, model_config, notes)
      _given_agrees(label, config, encoder_type, sampler)
    if volraft_config is not None:
      raise _fail(label, 'a VolRAFT YAML config applies only to upstream VolRAFT checkpoints (network_state_dict)')
  elif 'state_dict' in obj and isinstance(obj['state_dict'], Mapping) and 'model_config' not in obj:
    kind, w = 'state_dict', _weights(label, obj['state_dict'], 'state_dict')
    _family_matches(label, fmt, w.family)
    meta = _meta(obj, ('epoch', 'global_step'))
    config = _config_for_bare(label, w, volraft_config, volraft_config_path, encoder_type, sampler, notes)
  elif obj and all(isinstance(v, np.ndarray) for v in obj.values()):
    kind, w = 'state_dict', _weights(label, obj, 'the state dict')
    _family_matches(label, fmt, w.family)
    meta = {}
    config = _config_for_bare(label, w, volraft_config, volraft_config_path, encoder_type, sampler, notes)
  else:
    raise _fail(label, 'unknown layout: expected model_state_dict (RAFT-DVC), network_state_dict (VolRAFT) or a '
                       f'bare state dict; top-level keys: {_keys_preview(list(obj))}')
  if w.prefixes > (1 if w.family == 'volraft' else 0):
    notes.append('removed a DataParallel "module." prefix')
  _check_agrees(label, config, w, {'volraft': 'the VolRAFT config', 'state_dict': 'the config'}.get(
      kind, 'model_config'))
  return Source(path=label, kind=kind, config=config, state_dict=w.named_for(config), notes=notes, meta=meta)


def _config_for_bare(label, w, volraft_config, volraft_config_path, encoder_type, sampler, notes) -> ModelConfig:
  if volraft_config is not None and w.family == 'volraft':
    notes.append(f'VolRAFT config: {volraft_config_path or "given"}')
    config = volraft_yaml_config(volraft_config_path or label, volraft_config, notes)
    if sampler is not None:
      config = config.replace(sampler=sampler)
    return config
  if volraft_config is not None:
    raise _fail(label, 'a VolRAFT YAML config was given but the weights are RAFT-DVC\'s')
  return bare_config(label, w, encoder_type, sampler, notes)


def load_source(path: str, fmt: str = 'auto', volraft_config: Optional[str] = None,
                encoder_type: Optional[str] = None, sampler: Optional[str] = None) -> Source:
  """Reads a .pt/.pth file safely (torch_reader) and recognises it; looks for a VolRAFT YAML beside it."""
  from raftdvc_jax.convert import torch_reader  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such file')
  if os.path.isdir(path):
    raise _fail(path, 'is a directory, not a .pt/.pth file')
  obj = torch_reader.load(path)
  yaml_data = yaml_path = None
  if volraft_config is not None:
    if not os.path.isfile(volraft_config):
      raise FileNotFoundError(f'{volraft_config}: no such file')
    yaml_path, yaml_data = volraft_config, read_yaml(volraft_config)
  elif isinstance(obj, Mapping) and ('network_state_dict' in obj or _looks_volraft_bare(obj)):
    yaml_path = find_volraft_yaml(path)
    if yaml_path is not None:
      yaml_data = read_yaml(yaml_path)
  return detect(obj, path, fmt, yaml_data, yaml_path, encoder_type, sampler)


def _looks_volraft_bare(obj: Mapping) -> bool:
  keys = obj.get('state_dict', obj) if isinstance(obj.get('state_dict'), Mapping) else obj
  return any(isinstance(k, str) and re.search(r'(^|\.)cnet\.conv1\.weight$', k) for k in keys)


def to_variables(source: Source) -> dict:
  """Flax variables of a Source via the strict name table; a mismatch raises SourceError naming the file."""
  from raftdvc_jax.convert import mapping  # pylint: disable=import-outside-toplevel
  try:
    return mapping.from_torch(source.state_dict, source.config)
  except mapping.MappingError as e:
    raise _fail(source.path, str(e)) from None
