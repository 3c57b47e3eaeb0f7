"""One run on several devices with tf.distribute (`trainer.strategy` on TensorFlow).

    default                one device (TensorFlow's default strategy)
    mirrored               tf.distribute.MirroredStrategy over this host's GPUs, or over its
                           logical CPU devices when it has no GPU
    multi_worker_mirrored  tf.distribute.MultiWorkerMirroredStrategy over several processes or hosts:
                           start the same command once per worker, each with the TF_CONFIG
                           environment variable naming the cluster and its own task index
                           (README, "Scaling out"). Worker 0 is the chief; the others write their
                           outputs to <run dir>/worker-<index> and track nothing.

`trainer.batch_size` is the global batch: Keras splits every batch of the dataset evenly over
the replicas, in order (replica r of R gets rows [r*b/R, (r+1)*b/R)). Two things make R replicas
learn what one device learns from the same global batch:

- random draws (posterior samples, timesteps, noise) are indexed by the row of the global batch
  (finetune/training/rng.py) and each replica draws its own rows: the numbers one device draws;
- every replica averages its gradient with the others' (an all-reduce), so each holds the
  gradient of the global mean loss. Keras' optimizer sums gradients over replicas after it clips
  them, so a replica hands it gradient / R (`gradient_for_optimizer`) and the clip norm becomes
  max_grad_norm / R (`adapt_optimizer`): clip(g / R, c / R) summed over R replicas is clip(g, c).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from finetune.errors import ConfigError
from finetune.training.distribute import STRATEGIES


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker_mirrored":
        tf_config = os.environ.get("TF_CONFIG")
        if not tf_config:
            raise ConfigError(
                "trainer.strategy=multi_worker_mirrored needs the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}} '
                "(README, 'Scaling out'); for the devices of one host use trainer.strategy=mirrored"
            )
        try:
            json.loads(tf_config)["cluster"]["worker"]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"TF_CONFIG is not a JSON object with cluster.worker ({e}): {tf_config!r}") from None
        # Must run before any TensorFlow op: collective ops are configured at program startup.
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"trainer.strategy={name!r}; choose one of {list(STRATEGIES)}")


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This process's task index in a multi-worker cluster (0, the chief, otherwise)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return int(strategy.cluster_resolver.task_id or 0)
    return 0


def replica_position() -> tuple:
    """(replica id, number of replicas) of the running replica; (0, 1) outside a replica context."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return 0, 1
    return context.replica_id_in_sync_group, context.num_replicas_in_sync


def step_logs(logs: dict) -> dict:
    """A train step's scalar logs, shaped for Keras' average over the replicas.

    Under MultiWorkerMirroredStrategy, Keras 3.15's fit averages them with
    `strategy.reduce(MEAN, value, axis=0)`, which needs a batch axis: each value gets one of
    length 1 there (the average is a scalar again). Other strategies take scalars.
    """
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


def gradient_for_optimizer(gradient: tf.Tensor) -> tf.Tensor:
    """The replica's gradient averaged over all replicas, divided by their number (see the module doc)."""
    context = tf.distribute.get_replica_context()
    replicas = 1 if context is None else context.num_replicas_in_sync
    if replicas == 1:
        return gradient
    return context.all_reduce(tf.distribute.ReduceOp.SUM, gradient) / float(replicas * replicas)


def adapt_optimizer(optimizer, strategy: tf.distribute.Strategy) -> None:
    """Scale the optimizer's global clip norm to the gradients `gradient_for_optimizer` hands it."""
    replicas = strategy.num_replicas_in_sync
    if replicas > 1 and optimizer.global_clipnorm:
        optimizer.global_clipnorm = optimizer.global_clipnorm / replicas
