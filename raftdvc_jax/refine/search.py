"""Integer initial guess: ZNCC of each node's subset at every integer shift within a reach, by FFT.

For a subset of n = 2 half + 1 voxels a side and a reach R, the search region of vol1 is n + 2R a side and
the (2R + 1)^3 valid shifts of a circular correlation of that size are exactly the shifts searched. The
numerator correlates the zero-mean reference subset with the region; the local sums of g and g^2 over each
shifted window (the denominator) are correlations with a box, by the same FFTs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=('half', 'reach', 'pad'))
def search_batch(vol0, vol1_padded, nodes, centre, *, half: int, reach: int, pad: int):
  """Best integer displacement (B, 3) int32 within centre +- reach, and its ZNCC (B,), for nodes (B, 3).

  vol1_padded is vol1 padded by `pad` on every side; a search region reaching beyond it is moved inside
  (its shifts then no longer centre on `centre`).
  """
  n = 2 * half + 1
  size = n + 2 * reach
  shape_p = jnp.asarray(vol1_padded.shape, jnp.int32)
  box = jnp.zeros((size,) * 3, jnp.float32).at[:n, :n, :n].set(1.0)
  box_f = jnp.conj(jnp.fft.rfftn(box))
  axes = (0, 1, 2)

  def one(node, c):
    start0 = node - half
    ref = jax.lax.dynamic_slice(vol0, (start0[0], start0[1], start0[2]), (n, n, n))
    fz = ref - ref.mean()
    df = jnp.sqrt(jnp.sum(fz * fz))
    start = jnp.clip(start0 + c - reach + pad, 0, shape_p - size)
    g = jax.lax.dynamic_slice(vol1_padded, (start[0], start[1], start[2]), (size, size, size))
    f_pad = jnp.zeros((size,) * 3, jnp.float32).at[:n, :n, :n].set(fz)
    corr = lambda a_f, b: jnp.fft.irfftn(a_f * jnp.fft.rfftn(b), s=(size,) * 3, axes=axes)[
        :2 * reach + 1, :2 * reach + 1, :2 * reach + 1]
    num = corr(jnp.conj(jnp.fft.rfftn(f_pad)), g)
    s1 = corr(box_f, g)
    s2 = corr(box_f, g * g)
    var = jnp.maximum(s2 - s1 * s1 / n ** 3, 1e-12)
    zncc = num / (df * jnp.sqrt(var) + 1e-12)
    best = jnp.argmax(zncc)
    shift = jnp.stack(jnp.unravel_index(best, zncc.shape)).astype(jnp.int32)
    return start - pad + shift - start0, zncc.reshape(-1)[best]

  return jax.vmap(one)(nodes, centre)
