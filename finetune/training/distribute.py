"""One run on several devices with tf.distribute (`trainer.strategy`).

    default                one device (TensorFlow's default strategy)
    mirrored               tf.distribute.MirroredStrategy over this host's GPUs, or over its
                           logical CPU devices when it has no GPU
    multi_worker_mirrored  tf.distribute.MultiWorkerMirroredStrategy over several hosts: not working
                           yet, a clear error (see make_strategy)

`trainer.batch_size` is the global batch: Keras splits every batch of the dataset evenly over
the replicas, in order (replica r of R gets rows [r*b/R, (r+1)*b/R)). Two things make R replicas
learn what one device learns from the same global batch:

- random draws (posterior samples, timesteps, noise) are made for the whole global batch from
  (seed, step) and each replica keeps its own rows (`local_rows`): the numbers one device draws;
- every replica averages its gradient with the others' (an all-reduce), so each holds the
  gradient of the global mean loss. Keras' optimizer sums gradients over replicas after it clips
  them, so a replica hands it gradient / R (`gradient_for_optimizer`) and the clip norm becomes
  max_grad_norm / R (`adapt_optimizer`): clip(g / R, c / R) summed over R replicas is clip(g, c).
"""

from __future__ import annotations

import tensorflow as tf

from finetune.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker_mirrored":
        # Measured with two local workers (TF_CONFIG on localhost, Keras 3.15, TF 2.21): the strategy
        # starts and splits the global batch, then Keras' fit fails converting the per-replica batch
        # dict of our train step to a tensor. Fail before any work rather than deep inside fit.
        raise ConfigError(
            "trainer.strategy=multi_worker_mirrored does not work yet (Keras' fit fails on the per-replica "
            "batch; docs/benchmarks.md, 'Scaling out'); use trainer.strategy=mirrored for the devices of one host"
        )
    raise ConfigError(f"trainer.strategy={name!r}; choose one of {list(STRATEGIES)}")


def check_trainer(trainer_cfg, strategy: tf.distribute.Strategy) -> None:
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


def replica_position() -> tuple:
    """(replica id, number of replicas) of the running replica; (0, 1) outside a replica context."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return 0, 1
    return context.replica_id_in_sync_group, context.num_replicas_in_sync


def global_batch_size(local_batch_size):
    return local_batch_size * replica_position()[1]


def local_rows(global_values: tf.Tensor, local_batch_size) -> tf.Tensor:
    """This replica's rows of values drawn for the whole global batch."""
    replica, _ = replica_position()
    return global_values[replica * local_batch_size : (replica + 1) * local_batch_size]


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
