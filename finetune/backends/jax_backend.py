"""JAX: `jax.jit` over Keras' stateless calls (the weights are arguments, not constants baked into
the program), determinism from XLA itself."""

from __future__ import annotations

import jax


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
