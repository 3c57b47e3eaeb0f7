"""One run on several devices on JAX: `keras.distribution.DataParallel`.

The variables are replicated on every device and each batch is sharded over them; the jitted
step is one SPMD program over the global batch, so its random draws and its gradient are the
one-device run's (XLA inserts the all-reduce). Several processes (`multi_worker_mirrored`):
`keras.distribution.initialize()` (jax.distributed) from the environment variables
KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator's host:port first, comma separated),
KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID, then DataParallel over the
devices of every process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import jax
import keras

from finetune.errors import ConfigError

ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclass
class JaxStrategy:
    distribution: object | None = None  # keras.distribution.DataParallel, or None on one device
    num_replicas_in_sync: int = 1
    process_index: int = 0

    def scope(self):
        return self.distribution.scope() if self.distribution is not None else contextlib.nullcontext()


def make_strategy(name: str) -> JaxStrategy:
    if name == "default":
        return JaxStrategy()
    if name == "multi_worker_mirrored":
        missing = [k for k in ENV if not os.environ.get(k)]
        if missing:
            raise ConfigError(f"trainer.strategy=multi_worker_mirrored on JAX needs the environment variables "
                              f"{', '.join(missing)} (README, 'Scaling out'); for the devices of one host use "
                              "trainer.strategy=mirrored")
        if jax.process_count() == 1:
            keras.distribution.initialize()
    devices = jax.devices()
    return JaxStrategy(keras.distribution.DataParallel(devices=devices), len(devices), jax.process_index())


def worker_index(strategy: JaxStrategy) -> int:
    return strategy.process_index


def adapt_optimizer(optimizer, strategy: JaxStrategy) -> None:
    """The step's gradient is the global one: the optimizer clips it as on one device."""
