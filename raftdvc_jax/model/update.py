"""Update block: motion encoder, ConvGRU / SepConvGRU, flow head and the optional uncertainty head."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from raftdvc_jax.model.layers import TORCH_DEFAULT, Conv3d, Dtype, conv3d


class MotionEncoder(nn.Module):
  """Encodes correlation features and the current flow into 80 channels, then appends the flow (83)."""

  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, flow, corr):
    conv = lambda f, k, name: Conv3d(f, k, dtype=self.dtype, name=name)
    cor = nn.relu(conv(96, 1, 'convc1')(corr))
    flo = nn.relu(conv(64, 7, 'convf1')(flow))
    flo = nn.relu(conv(32, 3, 'convf2')(flo))
    out = nn.relu(conv(80, 3, 'conv')(jnp.concatenate([cor, flo], -1)))
    return jnp.concatenate([out, flow.astype(out.dtype)], -1)


class _ConvParams(nn.Module):
  """The kernel and bias of one Conv3d (same names and init), for convolutions applied fused."""

  features: int
  kernel_size: tuple

  @nn.compact
  def __call__(self, in_features):
    kernel = self.param('kernel', TORCH_DEFAULT, (*self.kernel_size, in_features, self.features))
    return kernel, self.param('bias', nn.initializers.zeros, (self.features,))


def _gru_pass(module, h, x, names, kernel_size, dtype):
  """One GRU update of h; z and r read the same input, so they run as one convolution of twice the width."""
  c = h.shape[-1]
  (kz, bz), (kr, br), (kq, bq) = (_ConvParams(c, kernel_size, name=n, parent=module)(c + x.shape[-1])
                                  for n in names)
  dtype = dtype or h.dtype
  pad = tuple(k // 2 for k in kernel_size)
  hx = jnp.concatenate([h, x], -1).astype(dtype)
  zr = conv3d(hx, jnp.concatenate([kz, kr], -1).astype(dtype), (1, 1, 1), pad)
  zr = nn.sigmoid(zr + jnp.concatenate([bz, br]).astype(dtype))
  z, r = zr[..., :c], zr[..., c:]
  q = jnp.tanh(conv3d(jnp.concatenate([r * h, x], -1).astype(dtype), kq.astype(dtype), (1, 1, 1), pad)
               + bq.astype(dtype))
  return (1 - z) * h + z * q


class ConvGRU(nn.Module):
  """GRU with 3^3 convolutions (VolRAFT, RAFT-DVC use_sep_conv=False)."""

  hidden_dim: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, h, x):
    return _gru_pass(self, h, x, ('convz', 'convr', 'convq'), (3, 3, 3), self.dtype)


class SepConvGRU(nn.Module):
  """GRU with 5-long convolutions along array axis 0, then 1, then 2 (RAFT-DVC's h, w, d passes)."""

  hidden_dim: int
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, h, x):
    for axis, tag in enumerate('hwd'):
      kernel = tuple(5 if a == axis else 1 for a in range(3))
      h = _gru_pass(self, h, x, (f'convz_{tag}', f'convr_{tag}', f'convq_{tag}'), kernel, self.dtype)
    return h


def _mol_bias(key, shape, dtype=jnp.float32):
  """MoL head bias: log-scales start at 0 and the mixing logit at 2 (alpha ~ 0.88 favours plain L1)."""
  return jnp.zeros(shape, dtype).at[3].set(2.0)


class Head(nn.Module):
  """conv 3^3 -> relu -> conv 3^3: the flow head (3 outputs) and the uncertainty heads (3 or 4)."""

  out_dim: int = 3
  hidden: int = 128
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, h):
    y = nn.relu(Conv3d(self.hidden, 3, dtype=self.dtype, name='conv1')(h))
    bias_init = _mol_bias if self.out_dim == 4 else nn.initializers.zeros
    return Conv3d(self.out_dim, 3, dtype=self.dtype, bias_init=bias_init, name='conv2')(y)


class UpdateBlock(nn.Module):
  """One RAFT iteration: (net, context, corr features, flow) -> (net, delta flow, uncertainty or None)."""

  hidden_dim: int = 96
  gru_type: str = 'sep'
  uncertainty: str = 'none'
  dtype: Dtype | None = None

  def setup(self):
    self.encoder = MotionEncoder(self.dtype)
    self.gru = (SepConvGRU if self.gru_type == 'sep' else ConvGRU)(self.hidden_dim, self.dtype)
    self.flow_head = Head(3, dtype=self.dtype)
    if self.uncertainty != 'none':
      self.uncertainty_head = Head(3 if self.uncertainty == 'nll' else 4, dtype=self.dtype)

  def __call__(self, net, context, corr, flow):
    motion = self.encoder(flow, corr)
    net = self.gru(net, jnp.concatenate([context.astype(motion.dtype), motion], -1))
    unc = self.uncertainty_head(net) if self.uncertainty != 'none' else None
    return net, self.flow_head(net), unc
