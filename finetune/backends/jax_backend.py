"""JAX: `jax.jit` over Keras' stateless calls (the weights are arguments, not constants baked into
the program), determinism from XLA itself."""

from __future__ import annotations

import logging
import os
import random

import jax
import numpy as np
from jax._src import xla_bridge  # backends_are_initialized: no public equivalent in JAX 0.10-0.11

log = logging.getLogger(__name__)


class QuietAttentionFallback(logging.Filter):
    """Keras asks JAX for cuDNN's flash attention first and, where JAX refuses the shapes (attention over
    the 77 text tokens in a training step on JAX 0.11: docs/gpu.md), logs a traceback before it falls back
    to XLA's attention: a traceback per layer at every compilation. This turns them into one line per
    process, with JAX's reason."""

    PREFIX = "Failed to apply cudnn implementation of jax.nn.dot_product_attention"

    def __init__(self):
        super().__init__()
        self.told = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.PREFIX):
            return True
        if not self.told:
            reason = record.exc_info[1] if record.exc_info else None
            log.info("cuDNN flash attention refused (%s): XLA's attention is used where it is (logged once)", reason)
            self.told = True
        return False


logging.getLogger("absl").addFilter(QuietAttentionFallback())  # the logger Keras' JAX attention reports to


def compiled_call(model, jit_compile: bool = True):
    """JAX always compiles (XLA); `jit_compile` is TensorFlow's switch and is ignored here."""

    @jax.jit
    def call(trainable, non_trainable, *args):
        return model.stateless_call(trainable, non_trainable, *args)[0]

    def weights():
        return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]

    def run(*args):
        return call(*weights(), *args)

    run.lower = lambda *args: call.lower(*weights(), *args)  # the compiled program, for the benchmark
    return run


DETERMINISTIC_GPU_OPS = "--xla_gpu_deterministic_ops=true"


def enable_determinism() -> None:
    """XLA on CPU is deterministic. On a GPU, XLA may pick among kernels and reduce with atomics unless
    `--xla_gpu_deterministic_ops` is set, and XLA reads its flags once, when JAX starts its backends:
    so this adds the flag to XLA_FLAGS before that (docs/gpu.md)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if DETERMINISTIC_GPU_OPS in flags:
        return
    os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_GPU_OPS}".strip()
    started = getattr(xla_bridge, "backends_are_initialized", lambda: False)()
    if started and any(d.platform == "gpu" for d in jax.devices()):
        log.warning("JAX started its GPU backend before determinism was asked for: this process's GPU ops may "
                    "not be bitwise reproducible; set XLA_FLAGS=%s before starting it", DETERMINISTIC_GPU_OPS)


def set_random_seed(seed: int) -> None:
    """What keras.utils.set_random_seed does for the JAX backend, minus seeding TensorFlow (which it
    imports when installed). Keras 3.15 keeps the seed and its global SeedGenerator in global_state."""
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    global_state.set_global_attribute("global_random_seed", seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
