"""Shared layers: 3D convolution with PyTorch's symmetric padding, the four encoder norms, trilinear resize."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
_DIMS = ('NDHWC', 'DHWIO', 'NDHWC')

# RAFT-DVC initialises encoder convs with kaiming_normal(fan_out, relu); the rest keep PyTorch's default,
# which is uniform with variance 1/3 of fan_in's.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
TORCH_DEFAULT = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
  return tuple(v) if isinstance(v, Sequence) else (v, v, v)


class Conv3d(nn.Module):
  """Conv3d with PyTorch semantics: explicit symmetric padding, kernel (k0, k1, k2, in, out), bias."""

  features: int
  kernel_size: int | Sequence[int]
  stride: int = 1
  padding: int | Sequence[int] | None = None  # None: k // 2, as every conv of RAFT-DVC does
  dtype: Dtype | None = None
  kernel_init: Callable = TORCH_DEFAULT
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    k = _triple(self.kernel_size)
    pad = _triple(self.padding) if self.padding is not None else tuple(i // 2 for i in k)
    kernel = self.param('kernel', self.kernel_init, (*k, x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    dtype = self.dtype or x.dtype
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), window_strides=_triple(self.stride),
        padding=[(p, p) for p in pad], dimension_numbers=_DIMS)
    return y + bias.astype(dtype)


def norm_layer(kind: str, channels: int, name: str, train: bool = False, dtype: Dtype | None = None):
  """The norm RAFT-DVC calls `kind` ('instance', 'group', 'batch', 'none') as a callable on NDHWC."""
  if kind == 'none':
    return lambda x: x
  if kind == 'instance':
    # PyTorch InstanceNorm3d: eps 1e-5 (Flax's default is 1e-6), no affine, biased variance.
    return nn.InstanceNorm(epsilon=1e-5, use_scale=False, use_bias=False, use_fast_variance=False,
                           dtype=dtype, name=name)
  if kind == 'group':
    return nn.GroupNorm(num_groups=max(1, channels // 8), epsilon=1e-5, use_fast_variance=False,
                        dtype=dtype, name=name)
  if kind == 'batch':
    # PyTorch momentum 0.1 on the new statistic == Flax momentum 0.9 on the running one.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                        dtype=dtype, name=name)
  raise ValueError(f'unknown norm {kind!r}')


def interp_matrix(n_out: int, n_in: int) -> np.ndarray:
  """(n_out, n_in) weights of 1-D linear interpolation with align_corners=True."""
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  src = np.arange(n_out, dtype=np.float64) * scale
  return np.maximum(0.0, 1.0 - np.abs(src[:, None] - np.arange(n_in)[None, :])).astype(np.float32)


def resize_trilinear(x, size: Sequence[int]):
  """Trilinear align_corners=True resize of (B, X0, X1, X2, C) to spatial `size`, as separable matmuls."""
  m0, m1, m2 = (jnp.asarray(interp_matrix(o, i)) for o, i in zip(size, x.shape[1:4]))
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum('ai,bijkc->bajkc', m0, x, precision=hp)
  x = jnp.einsum('bj,aijkc->aibkc', m1, x, precision=hp)
  return jnp.einsum('ck,aijkd->aijcd', m2, x, precision=hp)
