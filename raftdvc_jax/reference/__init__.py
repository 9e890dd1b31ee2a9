"""The independent PyTorch reference of RAFT-DVC and VolRAFT, against which the port is proven exact.

`raftdvc_jax.reference.torch_raft` is a PyTorch implementation written from the upstream descriptions
(layer shapes, state-dict names, the three sampler conventions); the parity tests, `raftdvc-convert
--verify` and the PyTorch side of tools/bench_*.py use it. It needs torch, an optional dependency
(`pip install 'raftdvc_jax[torch]'`); nothing else in the library imports it.
"""

from __future__ import annotations


def load():
  """The reference module, or ImportError in one line when torch is not installed."""
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise ImportError("the PyTorch reference needs torch: pip install 'raftdvc_jax[torch]'") from None
  from raftdvc_jax.reference import torch_raft as module  # pylint: disable=import-outside-toplevel
  return module
