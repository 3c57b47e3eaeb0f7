"""What differs between Keras backends, side by side and named by backend.

`tf_backend` and `jax_backend` implement the same few functions (compiled model calls, op
determinism, the textual-inversion gradient step); everything else in the project is written
in `keras.ops` and runs on either. Keras picks the backend from `KERAS_BACKEND` (or
`~/.keras/keras.json`) when it is first imported; this module dispatches on that choice and
imports only the active backend's module, so a JAX process never imports TensorFlow here.
"""

from __future__ import annotations

import importlib

import keras

from finetune.errors import ConfigError

SUPPORTED = {"tensorflow": "finetune.backends.tf_backend", "jax": "finetune.backends.jax_backend"}


def name() -> str:
    """The active Keras backend: "tensorflow" or "jax"."""
    return keras.backend.backend()


def active():
    """The module of the active backend (ConfigError for a backend the project does not support)."""
    backend = name()
    if backend not in SUPPORTED:
        raise ConfigError(f"KERAS_BACKEND={backend}: not supported; use one of {sorted(SUPPORTED)}")
    return importlib.import_module(SUPPORTED[backend])


def compiled_call(model, jit_compile: bool = False):
    """`model(*args)` as one compiled function (traced once per input shape), for inference."""
    return active().compiled_call(model, jit_compile)


def enable_determinism() -> None:
    """Make every op of this process deterministic (same inputs, same bits)."""
    active().enable_determinism()


def set_random_seed(seed: int) -> None:
    """Seed Keras' initializers (and Python's and NumPy's global generators) without importing
    TensorFlow where the backend does not need it (keras.utils.set_random_seed imports it if installed)."""
    active().set_random_seed(seed)
