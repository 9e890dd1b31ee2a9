"""Shared layers: 3D convolution with PyTorch's symmetric padding, the four encoder norms, trilinear resize."""

from __future__ import annotations

import functools
import math
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


def at_least_float32(x):
  """x in float32, or kept in float64: correlation and coordinates never run in bf16, and a float64 model
  (the parity tests' exact reference) stays float64."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


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
    y = conv3d(x.astype(dtype), kernel.astype(dtype), _triple(self.stride), pad)
    return y + bias.astype(dtype)


# Largest im2col slab (elements) for which a stride-1 convolution runs as matmuls; beyond it, XLA's conv.
MATMUL_CONV_MAX_ELEMENTS = 1 << 25


def conv3d(x, kernel, stride=(1, 1, 1), padding=(0, 0, 0)):
  """NDHWC convolution with symmetric `padding`.

  1x1x1 convs are matmuls; small stride-1 convs are matmuls over im2col slabs (_conv_matmul), the rest
  use _conv_s1 or XLA's strided conv. All give the same values to float rounding.
  """
  if kernel.shape[:3] == (1, 1, 1) and tuple(padding) == (0, 0, 0):
    x = x[:, ::stride[0], ::stride[1], ::stride[2]]
    return jnp.einsum('bxyzi,io->bxyzo', x, kernel[0, 0, 0])
  stride = tuple(stride)
  out = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip(x.shape[1:4], padding, kernel.shape[:3], stride)]
  if x.shape[0] * math.prod(out) * x.shape[-1] * kernel.shape[1] * kernel.shape[2] <= MATMUL_CONV_MAX_ELEMENTS:
    return _conv_matmul(x, kernel, stride, tuple(padding))
  if stride == (1, 1, 1):
    return _conv_s1(x, kernel, tuple(padding))
  return _conv(x, kernel, stride, [(p, p) for p in padding])


def _conv_matmul(x, kernel, stride, padding):
  """Conv as sum_a slab[plane a] @ W_a, where slab stacks the (k1, k2) taps of every voxel on channels.

  XLA-CPU runs these matmuls (and their gradients, which are matmuls too) 1.5-10x faster than its 3D
  convolutions at the sizes of the update block and encoders (docs/performance.md). The slab is built by
  shifting along axis 2 and then axis 1 (k1 + k2 slices rather than k1 * k2, which keeps compilation
  short); it costs k1*k2 times the output's voxels times the input channels, hence MATMUL_CONV_MAX_ELEMENTS.
  """
  k0, k1, k2, cin, cout = kernel.shape
  s0, s1, s2 = stride
  out = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip(x.shape[1:4], padding, kernel.shape[:3], stride)]
  span = [(o - 1) * s + 1 for o, s in zip(out, stride)]
  xp = jnp.pad(x, [(0, 0)] + [(p, p) for p in padding] + [(0, 0)])
  if k2 > 1 or s2 > 1:
    xp = jnp.concatenate([xp[:, :, :, c:c + span[2]:s2] for c in range(k2)], -1)
  if k1 > 1 or s1 > 1:
    xp = jnp.concatenate([xp[:, :, b:b + span[1]:s1] for b in range(k1)], -1)
  y = None
  for a in range(k0):
    term = jnp.einsum('bxyzi,io->bxyzo', xp[:, a:a + span[0]:s0], kernel[a].reshape(k1 * k2 * cin, cout))
    y = term if y is None else y + term
  return y


def _conv(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(x, kernel, window_strides=stride, padding=padding, dimension_numbers=_DIMS)


# Autodiff of a convolution inside lax.scan leaves XLA-CPU with weight-gradient convolutions in a layout it
# emits as naive loops (10x slower training). Writing both gradients as ordinary forward convolutions
# avoids that; the values are the same.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_s1(x, kernel, padding):
  return _conv(x, kernel, (1, 1, 1), [(p, p) for p in padding])


def _conv_s1_fwd(x, kernel, padding):
  return _conv_s1(x, kernel, padding), (x, kernel)


def _conv_s1_bwd(padding, res, g):
  x, kernel = res
  k = kernel.shape[:3]
  # dx: correlate g with the spatially flipped kernel, in/out channels swapped.
  flipped = jnp.flip(kernel, (0, 1, 2)).swapaxes(3, 4)
  dx = _conv(g, flipped, (1, 1, 1), [(n - 1 - p, n - 1 - p) for n, p in zip(k, padding)])
  # dkernel[k, i, o] = sum_{b, x} x[b, x + k - p, i] g[b, x, o]: a convolution with x's channels as the batch.
  lhs = x.transpose(4, 1, 2, 3, 0)   # (I, D, H, W, B)
  rhs = g.transpose(1, 2, 3, 0, 4)   # (D', H', W', B, O)
  dk = _conv(lhs, rhs, (1, 1, 1), [(p, p) for p in padding])  # (I, k0, k1, k2, O)
  return dx.astype(x.dtype), dk.transpose(1, 2, 3, 0, 4).astype(kernel.dtype)


_conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


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


def interp_matrix(n_out: int, n_in: int, dtype=np.float32) -> np.ndarray:
  """(n_out, n_in) weights of 1-D linear interpolation with align_corners=True."""
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  src = np.arange(n_out, dtype=np.float64) * scale
  return np.maximum(0.0, 1.0 - np.abs(src[:, None] - np.arange(n_in)[None, :])).astype(dtype)


def resize_trilinear(x, size: Sequence[int]):
  """Trilinear align_corners=True resize of (B, X0, X1, X2, C) to spatial `size`, as separable matmuls."""
  dtype = np.float64 if x.dtype == jnp.float64 else np.float32
  m0, m1, m2 = (jnp.asarray(interp_matrix(o, i, dtype)) for o, i in zip(size, x.shape[1:4]))
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum('ai,bijkc->bajkc', m0, x, precision=hp)
  x = jnp.einsum('bj,aijkc->aibkc', m1, x, precision=hp)
  return jnp.einsum('ck,aijkd->aijcd', m2, x, precision=hp)
