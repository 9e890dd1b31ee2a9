"""`python train.py ...` from a checkout: the raftdvc-train command (raftdvc_jax/commands/train.py)."""

from raftdvc_jax.commands import train

if __name__ == '__main__':
  train.entry()
