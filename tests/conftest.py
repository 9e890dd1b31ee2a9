"""Test-wide JAX settings."""

import jax

# The tests run tiny volumes, where XLA's optimisation passes cost more time than they save.
jax.config.update('jax_disable_most_optimizations', True)
