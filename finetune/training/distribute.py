"""One run on several devices (`trainer.strategy`), on either backend.

    default                one device
    mirrored               every device of this host (TensorFlow: MirroredStrategy over its GPUs, or its
                           logical CPU devices; JAX: keras.distribution.DataParallel over jax.devices())
    multi_worker_mirrored  several processes or hosts, one command per process (TensorFlow: TF_CONFIG;
                           JAX: KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID, README)

`trainer.batch_size` is the global batch, split evenly over the replicas; a run on R devices learns
what a one-device run learns from the same global batch. The backend's own code: `distribute_tf.py`
(tf.distribute), `distribute_jax.py` (keras.distribution). A strategy object has `scope()` (build the
models and fit inside it) and `num_replicas_in_sync`.
"""

from __future__ import annotations

import importlib

from finetune.backends import name as backend_name
from finetune.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")
MODULES = {"tensorflow": "finetune.training.distribute_tf", "jax": "finetune.training.distribute_jax"}


def _backend():
    return importlib.import_module(MODULES[backend_name()])


def make_strategy(name: str):
    """The strategy of `trainer.strategy=name` (ConfigError naming the key for an unknown one)."""
    if name not in STRATEGIES:
        raise ConfigError(f"trainer.strategy={name!r}; choose one of {list(STRATEGIES)}")
    return _backend().make_strategy(name)


def worker_index(strategy) -> int:
    """This process's index among the processes of a multi-process run (0, the chief, otherwise)."""
    return _backend().worker_index(strategy)


def adapt_optimizer(optimizer, strategy) -> None:
    """What the backend's gradient step needs of the optimizer under `strategy` (TensorFlow: the clip norm)."""
    _backend().adapt_optimizer(optimizer, strategy)


def check_trainer(trainer_cfg, strategy) -> None:
    """What a distributed run cannot do: a global batch that does not split evenly, and Keras'
    gradient accumulation (its optimizer cannot accumulate under a tf.distribute strategy)."""
    replicas = strategy.num_replicas_in_sync
    if trainer_cfg.batch_size % replicas:
        raise ConfigError(f"trainer.batch_size={trainer_cfg.batch_size} must be a multiple of the "
                          f"{replicas} replicas of trainer.strategy={trainer_cfg.strategy}")
    if trainer_cfg.strategy != "default" and trainer_cfg.gradient_accumulation_steps > 1:
        raise ConfigError(f"trainer.gradient_accumulation_steps={trainer_cfg.gradient_accumulation_steps} does not work "
                          f"with trainer.strategy={trainer_cfg.strategy}; raise trainer.batch_size instead "
                          "(it is the global batch, split over the replicas)")
