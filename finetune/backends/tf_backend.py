"""TensorFlow: `tf.function` for compiled calls, TensorFlow's op determinism."""

from __future__ import annotations

import keras
import tensorflow as tf


def compiled_call(model, jit_compile: bool = False):
    return tf.function(lambda *args: model(*args), jit_compile=jit_compile, reduce_retracing=True)


def enable_determinism() -> None:
    tf.config.experimental.enable_op_determinism()


def set_random_seed(seed: int) -> None:
    keras.utils.set_random_seed(seed)
