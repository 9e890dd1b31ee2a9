"""`python infer.py ...` from a checkout: the raftdvc-infer command (raftdvc_jax/commands/infer.py)."""

from raftdvc_jax.commands import run_from_checkout

if __name__ == '__main__':
  run_from_checkout('infer')
