"""Feature and context encoders: a 7^3 stem and three layers of two bottleneck blocks, any stride."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from raftdvc_jax.model.config import ENCODERS
from raftdvc_jax.model.layers import KAIMING_FAN_OUT, Conv3d, Dtype, at_least_float32, norm_layer, resize_trilinear

LAYER_PLANES = (32, 64, 96)


class BottleneckBlock(nn.Module):
  """1x1 -> 3^3 (stride) -> 1x1 residual block with mid = planes // 4."""

  planes: int
  stride: int = 1
  norm: str = 'instance'
  relu_after_norm3: bool = False  # VolRAFT's block has it, RAFT-DVC's does not
  train: bool = False
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    mid = self.planes // 4
    conv = lambda f, k, s, name: Conv3d(f, k, s, dtype=self.dtype, kernel_init=KAIMING_FAN_OUT, name=name)
    norm = lambda c, name: norm_layer(self.norm, c, name, self.train, self.dtype)
    y = nn.relu(norm(mid, 'norm1')(conv(mid, 1, 1, 'conv1')(x)))
    y = nn.relu(norm(mid, 'norm2')(conv(mid, 3, self.stride, 'conv2')(y)))
    y = norm(self.planes, 'norm3')(conv(self.planes, 1, 1, 'conv3')(y))
    if self.relu_after_norm3:
      y = nn.relu(y)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = norm(self.planes, 'norm4')(conv(self.planes, 1, self.stride, 'downsample')(x))
    return nn.relu(x + y)


class Encoder(nn.Module):
  """RAFT-DVC encoder of `encoder_type` mapping (B, X0, X1, X2, C) to (B, ceil(X/s), ..., output_dim)."""

  output_dim: int
  encoder_type: str = '1/8'
  norm: str = 'instance'
  relu_after_norm3: bool = False
  train: bool = False
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    stem_stride, layer_strides, upsample = ENCODERS[self.encoder_type]
    x = Conv3d(32, 7, stem_stride, dtype=self.dtype, kernel_init=KAIMING_FAN_OUT, name='conv1')(x)
    x = nn.relu(norm_layer(self.norm, 32, 'norm1', self.train, self.dtype)(x))
    for i, (planes, stride) in enumerate(zip(LAYER_PLANES, layer_strides), start=1):
      for j, s in enumerate((stride, 1)):
        x = BottleneckBlock(planes, s, self.norm, self.relu_after_norm3, self.train, self.dtype,
                            name=f'layer{i}_{j}')(x)
    x = Conv3d(self.output_dim, 1, dtype=self.dtype, kernel_init=KAIMING_FAN_OUT, name='conv2')(x)
    if upsample:  # '1/1-shallow-up': parameter-free x2 trilinear upsampling of the stride-2 features
      x = resize_trilinear(at_least_float32(x), [2 * n for n in x.shape[1:4]]).astype(x.dtype)
    return x


class ContextEncoder(nn.Module):
  """Context network: an Encoder of hidden + context channels, split into tanh(hidden) and relu(context)."""

  hidden_dim: int
  context_dim: int
  encoder_type: str = '1/8'
  norm: str = 'none'
  relu_after_norm3: bool = False
  train: bool = False
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    feat = Encoder(self.hidden_dim + self.context_dim, self.encoder_type, self.norm, self.relu_after_norm3,
                   self.train, self.dtype, name='encoder')(x)
    return jnp.tanh(feat[..., :self.hidden_dim]), nn.relu(feat[..., self.hidden_dim:])
