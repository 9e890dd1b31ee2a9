"""Independent PyTorch reference of RAFT-DVC and VolRAFT, written from the spec, for parity tests of the JAX port.

Driven by a plain config dict (`ModelConfig.to_dict()`) so that it never imports jax. Tensors are
`(B, C, X0, X1, X2)`; flow / coordinate channel c is the displacement / index along array axis c.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

# encoder_type -> (conv1 stride, layer1/2/3 strides, x2 upsample at the end, stride of the flow grid).
ENCODERS = {
    '1/1': (1, (1, 1, 1), False, 1),
    '1/2': (2, (1, 1, 1), False, 2),
    '1/4': (2, (1, 2, 1), False, 4),
    '1/8': (2, (1, 2, 2), False, 8),
    '1/2-late-stride': (1, (1, 1, 2), False, 2),
    '1/1-shallow-up': (2, (1, 1, 1), True, 1),
}
SAMPLERS = ('exact', 'raftdvc_v1', 'volraft')
# Fields and defaults of raftdvc_jax.model.config.ModelConfig, repeated here to stay free of jax.
DEFAULTS = dict(encoder_type='1/8', input_channels=1, feature_dim=128, hidden_dim=96, context_dim=64,
                encoder_norm='instance', context_norm='none', corr_levels=4, corr_radius=4, gru='sep',
                sampler='exact', volraft=False, uncertainty='none', iters=12)


def _config(config: Mapping[str, Any]) -> dict[str, Any]:
  # Keys the reference does not know are ignored, so that new ModelConfig fields do not break it.
  return {**DEFAULTS, **config}


# ----------------------------------------------------------------------------------------------- sampling


def sample(vol: torch.Tensor, coords: torch.Tensor, sampler: str = 'exact') -> torch.Tensor:
  """Trilinear zero-padded lookup of vol (B,C,S0,S1,S2) at coords (B,N0,N1,N2,3) -> (B,C,N0,N1,N2)."""
  s0, s1, s2 = vol.shape[2:]
  c0, c1, c2 = coords[..., 0], coords[..., 1], coords[..., 2]
  if sampler == 'volraft':
    # Upstream VolRAFT: the volume goes in unpermuted and each channel is normalised by another axis's size.
    grid = torch.stack([2 * c0 / (s1 - 1) - 1, 2 * c1 / (s0 - 1) - 1, 2 * c2 / (s2 - 1) - 1], dim=-1)
    return F.grid_sample(vol, grid, mode='bilinear', padding_mode='zeros', align_corners=True)
  # RAFT-DVC: the same 2c/(S-1)-1 round trip, so singleton axes give inf/NaN and read zero like the original.
  norm = torch.stack([2.0 * c0 / (s0 - 1) - 1.0, 2.0 * c1 / (s1 - 1) - 1.0, 2.0 * c2 / (s2 - 1) - 1.0], dim=-1)
  if sampler == 'exact':
    grid = norm[..., [1, 0, 2]]
  elif sampler == 'raftdvc_v1':
    grid = norm[..., [2, 0, 1]]  # the pre-fix channel order: W<->D swap
  else:
    raise ValueError(f'unknown sampler {sampler!r}')
  out = F.grid_sample(vol.permute(0, 1, 4, 2, 3), grid.permute(0, 3, 1, 2, 4), mode='bilinear',
                      padding_mode='zeros', align_corners=True)
  return out.permute(0, 1, 3, 4, 2)


def coords_grid(batch: int, size, dtype=torch.float32) -> torch.Tensor:
  """(B,3,n0,n1,n2) grid (float32 unless given) whose channel c is the index along axis c."""
  axes = [torch.arange(n, dtype=dtype) for n in size]
  return torch.stack(torch.meshgrid(*axes, indexing='ij'), dim=0)[None].repeat(batch, 1, 1, 1, 1)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
  """RAFT-DVC's .float() (the correlation in float32 under fp16 autocast), keeping a float64 model float64."""
  return x if x.dtype == torch.float64 else x.float()


class CorrBlockRef:
  """All-pairs correlation pyramid with a (2r+1)^3 window lookup per level."""

  def __init__(self, fmap0: torch.Tensor, fmap1: torch.Tensor, levels: int, radius: int, sampler: str = 'exact'):
    if sampler not in SAMPLERS:
      raise ValueError(f'unknown sampler {sampler!r}')
    self.levels, self.radius, self.sampler = levels, radius, sampler
    b, c, h, w, d = fmap0.shape
    corr = torch.matmul(fmap0.reshape(b, c, h * w * d).transpose(1, 2), fmap1.reshape(b, c, h * w * d))
    corr = corr / torch.sqrt(torch.tensor(float(c), dtype=torch.float32))
    corr = corr.reshape(b * h * w * d, 1, h, w, d)
    self.pyramid = [corr]
    for _ in range(levels - 1):
      corr = F.avg_pool3d(corr, 2, stride=2)
      self.pyramid.append(corr)

  def __call__(self, coords: torch.Tensor) -> torch.Tensor:
    """coords (B,3,h,w,d) -> (B, levels*(2r+1)^3, h, w, d), channel l*(2r+1)^3 + a*(2r+1)^2 + b*(2r+1) + c."""
    r = self.radius
    b, _, h, w, d = coords.shape
    offsets = torch.linspace(-r, r, 2 * r + 1)
    delta = torch.stack(torch.meshgrid(offsets, offsets, offsets, indexing='ij'), dim=-1)[None]
    centroid = coords.permute(0, 2, 3, 4, 1).reshape(b * h * w * d, 1, 1, 1, 3)
    out = []
    for level, corr in enumerate(self.pyramid):
      window = sample(corr, centroid / 2**level + delta, self.sampler)
      out.append(window.reshape(b, h, w, d, -1))
    return at_least_float32(torch.cat(out, dim=-1).permute(0, 4, 1, 2, 3).contiguous())


# ----------------------------------------------------------------------------------------------- encoders


def _norm(kind: str, channels: int) -> nn.Module:
  if kind == 'group':
    return nn.GroupNorm(max(1, channels // 8), channels)
  if kind == 'batch':
    return nn.BatchNorm3d(channels)
  if kind == 'instance':
    return nn.InstanceNorm3d(channels)
  if kind == 'none':
    return nn.Identity()
  raise ValueError(f'unknown norm {kind!r}')


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 residual block; relu3 adds VolRAFT's ReLU after norm3."""

  def __init__(self, cin: int, planes: int, norm: str, stride: int, relu3: bool):
    super().__init__()
    mid = planes // 4
    self.conv1 = nn.Conv3d(cin, mid, 1)
    self.conv2 = nn.Conv3d(mid, mid, 3, stride=stride, padding=1)
    self.conv3 = nn.Conv3d(mid, planes, 1)
    self.norm1, self.norm2, self.norm3 = _norm(norm, mid), _norm(norm, mid), _norm(norm, planes)
    self.relu3 = relu3
    self.downsample = None
    if stride != 1 or cin != planes:
      # Registered twice on purpose: the originals expose the same norm as norm4.* and downsample.1.*.
      self.norm4 = _norm(norm, planes)
      self.downsample = nn.Sequential(nn.Conv3d(cin, planes, 1, stride=stride), self.norm4)

  def forward(self, x):
    y = F.relu(self.norm1(self.conv1(x)))
    y = F.relu(self.norm2(self.conv2(y)))
    y = self.norm3(self.conv3(y))
    if self.relu3:
      y = F.relu(y)
    res = x if self.downsample is None else self.downsample(x)
    return F.relu(y + res)


class Encoder(nn.Module):
  """conv7 -> norm -> relu -> 3 bottleneck layers (32, 64, 96) -> conv1x1, strides per encoder_type."""

  def __init__(self, cin: int, cout: int, norm: str, encoder_type: str, relu3: bool):
    super().__init__()
    conv1_stride, strides, self.upsample, _ = ENCODERS[encoder_type]
    self.conv1 = nn.Conv3d(cin, 32, 7, stride=conv1_stride, padding=3)
    self.norm1 = _norm(norm, 32)
    layers, planes_in = [], 32
    for planes, stride in zip((32, 64, 96), strides):
      layers.append(nn.Sequential(Bottleneck(planes_in, planes, norm, stride, relu3),
                                  Bottleneck(planes, planes, norm, 1, relu3)))
      planes_in = planes
    self.layer1, self.layer2, self.layer3 = layers
    self.conv2 = nn.Conv3d(96, cout, 1)

  def forward(self, x):
    x = F.relu(self.norm1(self.conv1(x)))
    x = self.conv2(self.layer3(self.layer2(self.layer1(x))))
    if self.upsample:
      x = F.interpolate(x, scale_factor=2.0, mode='trilinear', align_corners=True)
    return x


class ContextEncoder(nn.Module):
  """RAFT-DVC's context wrapper; only here so the weights live under `cnet.encoder.*`."""

  def __init__(self, encoder: Encoder):
    super().__init__()
    self.encoder = encoder


# ----------------------------------------------------------------------------------------------- update


class MotionEncoder(nn.Module):
  """Correlation + flow features: cat[relu(conv(cat[cor(96), flo(32)]))(80), flow(3)]."""

  def __init__(self, corr_channels: int):
    super().__init__()
    self.convc1 = nn.Conv3d(corr_channels, 96, 1)
    self.convf1 = nn.Conv3d(3, 64, 7, padding=3)
    self.convf2 = nn.Conv3d(64, 32, 3, padding=1)
    self.conv = nn.Conv3d(128, 80, 3, padding=1)

  def forward(self, flow, corr):
    cor = F.relu(self.convc1(corr))
    flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
    return torch.cat([F.relu(self.conv(torch.cat([cor, flo], dim=1))), flow], dim=1)


def _gru_step(h, x, convz, convr, convq):
  hx = torch.cat([h, x], dim=1)
  z = torch.sigmoid(convz(hx))
  r = torch.sigmoid(convr(hx))
  q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
  return (1 - z) * h + z * q


class SepConvGRU(nn.Module):
  """Three GRU passes with 5-tap convs along array axis 0 (h), then 1 (w), then 2 (d)."""

  def __init__(self, hidden: int, inp: int):
    super().__init__()
    for axis, name in enumerate('hwd'):
      kernel, pad = [1, 1, 1], [0, 0, 0]
      kernel[axis], pad[axis] = 5, 2
      for gate in 'zrq':
        setattr(self, f'conv{gate}_{name}', nn.Conv3d(hidden + inp, hidden, tuple(kernel), padding=tuple(pad)))

  def forward(self, h, x):
    for name in 'hwd':
      h = _gru_step(h, x, *(getattr(self, f'conv{gate}_{name}') for gate in 'zrq'))
    return h


class ConvGRU(nn.Module):
  """One GRU pass with 3^3 convs."""

  def __init__(self, hidden: int, inp: int):
    super().__init__()
    self.convz = nn.Conv3d(hidden + inp, hidden, 3, padding=1)
    self.convr = nn.Conv3d(hidden + inp, hidden, 3, padding=1)
    self.convq = nn.Conv3d(hidden + inp, hidden, 3, padding=1)

  def forward(self, h, x):
    return _gru_step(h, x, self.convz, self.convr, self.convq)


class Head(nn.Module):
  """conv3 -> relu -> conv3; the flow head (3 out) and the uncertainty heads (3 'nll', 4 'mol')."""

  def __init__(self, cin: int, cout: int, hidden: int = 128):
    super().__init__()
    self.conv1 = nn.Conv3d(cin, hidden, 3, padding=1)
    self.conv2 = nn.Conv3d(hidden, cout, 3, padding=1)

  def forward(self, x):
    return self.conv2(F.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
  """Motion encoder -> GRU on cat[context, motion] -> flow head (+ optional uncertainty head)."""

  def __init__(self, cfg: Mapping[str, Any]):
    super().__init__()
    corr_channels = cfg['corr_levels'] * (2 * cfg['corr_radius'] + 1) ** 3
    self.encoder = MotionEncoder(corr_channels)
    gru = {'sep': SepConvGRU, 'conv': ConvGRU}[cfg['gru']]
    self.gru = gru(cfg['hidden_dim'], cfg['context_dim'] + 83)
    self.flow_head = Head(cfg['hidden_dim'], 3)
    if cfg['uncertainty'] != 'none':
      self.uncertainty_head = Head(cfg['hidden_dim'], {'nll': 3, 'mol': 4}[cfg['uncertainty']])
      with torch.no_grad():  # the originals' starting point: b = exp(0) = 1, mixing logit 2
        self.uncertainty_head.conv2.bias.zero_()
        if cfg['uncertainty'] == 'mol':
          self.uncertainty_head.conv2.bias[3] = 2.0
    else:
      self.uncertainty_head = None

  def forward(self, net, ctx, corr, flow):
    net = self.gru(net, torch.cat([ctx, self.encoder(flow, corr)], dim=1))
    unc = None if self.uncertainty_head is None else self.uncertainty_head(net)
    return net, self.flow_head(net), unc


# ----------------------------------------------------------------------------------------------- models


def normalize_pair(vol0: torch.Tensor, vol1: torch.Tensor):
  """Joint per-sample, per-channel min-max of the pair to [0, 1]; a constant pair is only shifted."""
  stacked = torch.stack([vol0, vol1], dim=-1)
  mn = stacked.amin(dim=(2, 3, 4, 5), keepdim=True).squeeze(-1)
  mx = stacked.amax(dim=(2, 3, 4, 5), keepdim=True).squeeze(-1)
  den = mx - mn
  den = torch.where(den > 0, den, torch.ones_like(den))
  return ((vol0 - mn) / den).contiguous(), ((vol1 - mn) / den).contiguous()


def upflow_3d(flow: torch.Tensor, size) -> torch.Tensor:
  """Trilinear (align_corners) resize to size; channels 0..2 scaled by size_c / flow_size_c."""
  up = F.interpolate(flow, size=tuple(size), mode='trilinear', align_corners=True)
  for c in range(3):
    up[:, c] *= size[c] / flow.shape[2 + c]
  return up


def upflow8(flow: torch.Tensor, size) -> torch.Tensor:
  """VolRAFT's upflow8 with the input size as target: an extra x8 on top of the size ratio."""
  up = 8 * F.interpolate(flow, size=tuple(size), mode='trilinear', align_corners=True)
  for c in range(3):
    up[:, c] *= float(size[c]) / float(flow.shape[2 + c])
  return up


def _forward(cfg, fnet, cnet, update_block, vol0, vol1, iters, flow_init, test_mode):
  iters = iters or cfg['iters']
  vol0, vol1 = normalize_pair(vol0, vol1)
  batch, size = vol0.shape[0], tuple(vol0.shape[2:])
  fmap0, fmap1 = torch.split(fnet(torch.cat([vol0, vol1], dim=0)), [batch, batch], dim=0)
  corr_fn = CorrBlockRef(at_least_float32(fmap0), at_least_float32(fmap1), cfg['corr_levels'], cfg['corr_radius'],
                         cfg['sampler'])
  net, ctx = torch.split(cnet(vol0), [cfg['hidden_dim'], cfg['context_dim']], dim=1)
  net, ctx = torch.tanh(net), torch.relu(ctx)
  stride = ENCODERS[cfg['encoder_type']][3]
  coords0 = coords_grid(batch, [math.ceil(n / stride) for n in size], at_least_float32(fmap0).dtype)
  if coords0.shape[2:] != fmap0.shape[2:]:
    raise ValueError(f'feature grid {tuple(fmap0.shape[2:])} != flow grid {tuple(coords0.shape[2:])}')
  coords1 = coords0.clone()
  if flow_init is not None:
    coords1 = coords1 + flow_init
  upsample = upflow8 if cfg['volraft'] else upflow_3d
  flows, uncs = [], []
  for _ in range(iters):
    coords1 = coords1.detach()
    corr = corr_fn(coords1)
    net, delta, unc = update_block(net, ctx, corr, coords1 - coords0)
    coords1 = coords1 + delta
    flows.append(upsample(coords1 - coords0, size))
    if unc is not None:
      uncs.append(upflow_3d(unc, size))  # RAFT-DVC runs the uncertainty through the flow upsampler too
  if test_mode:
    return (coords1 - coords0, flows[-1]) + ((uncs[-1],) if uncs else ())
  return (flows, uncs) if uncs else flows


def _encoders(cfg: Mapping[str, Any]):
  """(fnet, context encoder) of one config."""
  make = functools.partial(Encoder, cfg['input_channels'], encoder_type=cfg['encoder_type'], relu3=cfg['volraft'])
  return make(cfg['feature_dim'], cfg['encoder_norm']), make(cfg['hidden_dim'] + cfg['context_dim'],
                                                             cfg['context_norm'])


class RAFTDVCRef(nn.Module):
  """RAFT-DVC with the original state_dict layout: fnet.*, cnet.encoder.*, update_block.*."""

  def __init__(self, config: Mapping[str, Any]):
    super().__init__()
    self.config = _config(config)
    self.fnet, cnet = _encoders(self.config)
    self.cnet = ContextEncoder(cnet)
    self.update_block = UpdateBlock(self.config)

  def forward(self, vol0, vol1, iters=None, flow_init=None, test_mode=False):
    return _forward(self.config, self.fnet, self.cnet.encoder, self.update_block, vol0, vol1, iters, flow_init,
                    test_mode)


class VolRAFTModule(nn.Module):
  """Holder of VolRAFT's networks (cnet is the encoder itself)."""

  def __init__(self, cfg: Mapping[str, Any]):
    super().__init__()
    self.fnet, self.cnet = _encoders(cfg)
    self.update_block = UpdateBlock(cfg)


class VolRAFTRef(nn.Module):
  """VolRAFT (NetworkVolRAFT) with the upstream state_dict layout: module.fnet.*, module.cnet.*, ..."""

  def __init__(self, config: Mapping[str, Any]):
    super().__init__()
    self.config = _config(config)
    self.module = VolRAFTModule(self.config)

  def forward(self, vol0, vol1, iters=None, flow_init=None, test_mode=False):
    m = self.module
    return _forward(self.config, m.fnet, m.cnet, m.update_block, vol0, vol1, iters, flow_init, test_mode)


def build(config: Mapping[str, Any]) -> nn.Module:
  """RAFTDVCRef, or VolRAFTRef when config['volraft']; returned in eval mode (batch norm uses running stats)."""
  cfg = _config(config)
  return (VolRAFTRef if cfg['volraft'] else RAFTDVCRef)(cfg).eval()


def init_weights(model: nn.Module, seed: int) -> nn.Module:
  """Deterministic random weights: PyTorch's default conv init, random affine norms and running stats."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():  # modules() visits a norm shared by norm4 and downsample.1 once
      if isinstance(m, nn.Conv3d):
        bound = 1.0 / math.sqrt(m.weight[0].numel())  # = kaiming_uniform(a=sqrt(5)) and the default bias init
        m.weight.uniform_(-bound, bound, generator=gen)
        m.bias.uniform_(-bound, bound, generator=gen)
      elif isinstance(m, (nn.GroupNorm, nn.BatchNorm3d)):
        m.weight.uniform_(0.5, 1.5, generator=gen)
        m.bias.uniform_(-0.3, 0.3, generator=gen)
        if isinstance(m, nn.BatchNorm3d):
          m.running_mean.normal_(0.0, 0.3, generator=gen)
          m.running_var.uniform_(0.5, 2.0, generator=gen)
          m.num_batches_tracked.fill_(seed % 1000 + 1)
  return model
