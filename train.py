"""`python train.py ...` from a checkout: the raftdvc-train command (raftdvc_jax/commands/train.py)."""

from raftdvc_jax.commands import run_from_checkout

if __name__ == '__main__':
  run_from_checkout('train')
