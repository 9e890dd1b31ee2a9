"""Training: the task (loss, metrics), schedules, optimizer and state, the sharded step, checkpoints, the loop.

  from raftdvc_jax.train import loop
  loop.train_and_evaluate(config, workdir)      # config: an ml_collections config as in configs/*.py

Modules: loss (sequence loss, EPE), schedule (PyTorch-exact OneCycleLR / CyclicLR), state (TrainState,
optimizer, init_from), step (jitted data-parallel steps), checkpoint (Orbax layout), input_pipeline (data from
config.data), defaults (the base config), loop (the trainer).
"""
