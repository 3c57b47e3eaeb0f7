"""JAX: `jax.jit` over Keras' stateless calls (the weights are arguments, not constants baked into
the program), determinism from XLA itself."""

from __future__ import annotations

import random

import jax
import numpy as np


def compiled_call(model, jit_compile: bool = True):
    """JAX always compiles (XLA); `jit_compile` is TensorFlow's switch and is ignored here."""

    @jax.jit
    def call(trainable, non_trainable, *args):
        return model.stateless_call(trainable, non_trainable, *args)[0]

    def run(*args):
        return call([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
                    *args)

    return run


def enable_determinism() -> None:
    """XLA on CPU is deterministic; on GPU, XLA_FLAGS=--xla_gpu_deterministic_ops=true (docs/gpu.md)."""


def set_random_seed(seed: int) -> None:
    """What keras.utils.set_random_seed does for the JAX backend, minus seeding TensorFlow (which it
    imports when installed). Keras 3.15 keeps the seed and its global SeedGenerator in global_state."""
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    global_state.set_global_attribute("global_random_seed", seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
