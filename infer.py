"""`python infer.py ...` from a checkout: the raftdvc-infer command (raftdvc_jax/commands/infer.py)."""

from raftdvc_jax.commands import infer

if __name__ == '__main__':
  infer.entry()
