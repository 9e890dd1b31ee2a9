"""The model config: plain, frozen data that round-trips through JSON and travels inside checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, NamedTuple


class EncoderStrides(NamedTuple):
  """Strides of one encoder_type; every type shares one parameter set, so weights load across them."""

  conv1_stride: int          # the stem convolution
  layer_strides: tuple       # the first block of layer1, layer2, layer3
  upsample: bool             # a x2 trilinear upsampling of the features at the end


ENCODERS = {
    '1/1': EncoderStrides(1, (1, 1, 1), False),
    '1/2': EncoderStrides(2, (1, 1, 1), False),
    '1/4': EncoderStrides(2, (1, 2, 1), False),
    '1/8': EncoderStrides(2, (1, 2, 2), False),
    '1/2-late-stride': EncoderStrides(1, (1, 1, 2), False),
    '1/1-shallow-up': EncoderStrides(2, (1, 1, 1), True),
}
NORMS = ('instance', 'none', 'group', 'batch')
GRUS = ('sep', 'conv')
# How the correlation lookup maps a query (c0, c1, c2) onto a pyramid level (see corr.py):
#   exact       vol[c0, c1, c2] (RAFT-DVC corr_sampler_version 2, VolRAFT 'fixed').
#   raftdvc_v1  the W<->D swap of RAFT-DVC checkpoints saved before the sampler fix.
#   volraft     the H<->D swap with per-axis rescale of VolRAFT as released.
SAMPLERS = ('exact', 'raftdvc_v1', 'volraft')
UNCERTAINTY = ('none', 'nll', 'mol')


# How the correlation is computed, chosen at run time (FlowEstimator, RAFTDVC, config.train), never stored.
RUNTIME_KEYS = ('corr_method', 'correlation', 'lookup')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of one RAFT-DVC / VolRAFT network; field names follow RAFT-DVC's model_config."""

  encoder_type: str = '1/8'
  input_channels: int = 1
  feature_dim: int = 128
  hidden_dim: int = 96
  context_dim: int = 64
  encoder_norm: str = 'instance'
  context_norm: str = 'none'
  corr_levels: int = 4
  corr_radius: int = 4
  gru: str = 'sep'
  sampler: str = 'exact'
  # VolRAFT's architecture: ReLU after norm3 in every bottleneck block and an extra x8 on the upsampled flow.
  volraft: bool = False
  uncertainty: str = 'none'
  iters: int = 12

  def __post_init__(self):
    checks = [
        (self.encoder_type in ENCODERS, f'encoder_type {self.encoder_type!r} not in {sorted(ENCODERS)}'),
        (self.encoder_norm in NORMS, f'encoder_norm {self.encoder_norm!r} not in {NORMS}'),
        (self.context_norm in NORMS, f'context_norm {self.context_norm!r} not in {NORMS}'),
        (self.gru in GRUS, f'gru {self.gru!r} not in {GRUS}'),
        (self.sampler in SAMPLERS, f'sampler {self.sampler!r} not in {SAMPLERS}'),
        (self.uncertainty in UNCERTAINTY, f'uncertainty {self.uncertainty!r} not in {UNCERTAINTY}'),
        (self.corr_levels >= 1 and self.corr_radius >= 0, 'corr_levels must be >= 1 and corr_radius >= 0'),
        (self.iters >= 1, 'iters must be >= 1'),
        (min(self.input_channels, self.feature_dim, self.hidden_dim, self.context_dim) >= 1,
         'channel counts must be positive'),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(f'ModelConfig: {message}')

  @property
  def stride(self) -> int:
    """Voxels of input per voxel of the flow grid the iterations run on."""
    enc = ENCODERS[self.encoder_type]
    return enc.conv1_stride * math.prod(enc.layer_strides) // (2 if enc.upsample else 1)

  @property
  def flow_scale(self) -> float:
    """Factor the upsampled flow is multiplied by on top of the size ratio: 8 for VolRAFT (its upflow8
    scales by 8 whatever the stride; RAFTDVCConfig-converted VolRAFT weights expect it), else 1."""
    return 8.0 if self.volraft else 1.0

  @property
  def corr_channels(self) -> int:
    return self.corr_levels * (2 * self.corr_radius + 1) ** 3

  @property
  def min_size(self) -> int:
    """Smallest input side: the coarsest pyramid level must keep at least one voxel per side."""
    return self.stride * (2 ** (self.corr_levels - 1) - 1) + 1

  def check_size(self, shape, what: str = 'volume') -> None:
    """Raises ValueError naming `what` when a side of `shape` is below min_size (the one size rule)."""
    shape = tuple(int(n) for n in shape)
    if min(shape) < self.min_size:
      raise ValueError(f'{what} {shape} is too small for this network: every side must be >= {self.min_size} '
                       f'({self.describe()})')

  def describe(self) -> str:
    """One line naming what decides the network's behaviour, for messages."""
    return (f'stride {self.stride} ({self.encoder_type} encoder), {self.corr_levels} pyramid levels of radius '
            f'{self.corr_radius}, {self.gru} GRU, {self.sampler} sampler, '
            f'{"VolRAFT" if self.volraft else "RAFT-DVC"} blocks, {self.iters} iterations'
            + (f', uncertainty {self.uncertainty}' if self.uncertainty != 'none' else ''))

  def replace(self, **changes) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'ModelConfig':
    """Builds a config from a dict; unknown keys are an error so that a typo never passes silently.

    The run-time choices of how to compute the correlation (RUNTIME_KEYS: 'corr_method', the old single word
    for both, and 'correlation' / 'lookup') are not part of a network and are dropped, so model_config.json
    files that carry them still load.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    d = {k: v for k, v in d.items() if k not in RUNTIME_KEYS}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'ModelConfig: unknown keys {unknown}')
    return cls(**dict(d))

  @classmethod
  def from_json(cls, s: str) -> 'ModelConfig':
    return cls.from_dict(json.loads(s))


# The released RAFT-DVC arms: two pyramid levels, radius 4, SepConvGRU, exact sampler. Pick by displacement:
# |u| <= 4 voxels -> s2, <= 8 -> s4, <= 16 -> s8 (RAFT-DVC README).
S2 = ModelConfig(encoder_type='1/2', corr_levels=2, corr_radius=4)
S4 = ModelConfig(encoder_type='1/4', corr_levels=2, corr_radius=4)
S8 = ModelConfig(encoder_type='1/8', corr_levels=2, corr_radius=4)
# RAFT-DVC's older default (paper-1, 1/8 encoder with four levels).
RAFTDVC_1_8_P4 = ModelConfig(encoder_type='1/8', corr_levels=4, corr_radius=4)
# VolRAFT volraft_config_120 as released: ConvGRU, four levels of radius 3, H<->D sampler, x8 upsampling quirk.
VOLRAFT_120 = ModelConfig(encoder_type='1/8', corr_levels=4, corr_radius=3, gru='conv', sampler='volraft',
                          volraft=True)

PRESETS = {'s2': S2, 's4': S4, 's8': S8, 'raftdvc_1_8_p4': RAFTDVC_1_8_P4, 'volraft_120': VOLRAFT_120}


def preset(name: str) -> ModelConfig:
  """Returns a named preset config (s2, s4, s8, raftdvc_1_8_p4, volraft_120)."""
  if name not in PRESETS:
    raise ValueError(f'unknown model preset {name!r}; choose from {sorted(PRESETS)}')
  return PRESETS[name]
