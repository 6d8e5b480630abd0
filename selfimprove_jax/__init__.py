"""selfimprove_jax: a language model that improves itself in a closed loop, in JAX/Flax."""

__version__ = "0.1.0"
