"""The textual-inversion gradient step on TensorFlow: `tf.GradientTape` around the shared loss."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from finetune.training.distribute_tf import gradient_for_optimizer, replica_position, step_logs


def train_step(tuner, data):
    batch = data[0] if isinstance(data, (tuple, list)) else data  # fit(x=array) hands (x,)
    replica, replicas = replica_position()
    first_row = replica * tf.shape(batch)[0]  # this replica's rows of the global batch
    noisy, timesteps, noise, tokens = tuner.sample_inputs(batch, tuner.step_counter, first_row)
    with tf.GradientTape() as tape:
        objective, loss = tuner.objective(noisy, timesteps, noise, tokens)
        scaled = tuner.optimizer.scale_loss(objective)
    gradient = tape.gradient(scaled, tuner.learned_vectors)
    if isinstance(gradient, tf.IndexedSlices):
        gradient = tf.convert_to_tensor(gradient)  # [num_vectors, D]: small
    gradient = gradient_for_optimizer(gradient)
    lr = tf.convert_to_tensor(tuner.optimizer.learning_rate)  # the rate of this update (read before it)
    # The global gradient's norm before clipping: gradient_for_optimizer divided it by the number of
    # replicas, and the loss scale (mixed_float16; read before apply_gradients updates it) is divided out.
    scale = tf.cast(tuner.optimizer.scale_loss(1.0), "float32") / replicas
    grad_norm = tf.norm(tf.cast(gradient, "float32")) / scale
    tuner.optimizer.apply_gradients([(gradient, tuner.learned_vectors)])
    tuner.step_counter.assign_add(1)
    # Keras averages these over the replicas: the loss becomes the global batch's.
    return step_logs({"loss": loss, "lr": lr, "grad_norm": grad_norm})


def loss_and_gradient(tuner, batch, step: int) -> tuple[float, np.ndarray]:
    """The loss of `batch` at update `step` and its gradient for the learned vectors (no update)."""
    noisy, timesteps, noise, tokens = tuner.sample_inputs(batch, step)
    with tf.GradientTape() as tape:
        objective, loss = tuner.objective(noisy, timesteps, noise, tokens)
    gradient = tape.gradient(objective, tuner.learned_vectors)
    return float(loss), tf.convert_to_tensor(gradient).numpy().astype("float32")


def current_vectors(tuner) -> np.ndarray:
    return keras.ops.convert_to_numpy(tuner.learned_vectors).astype("float32")


def sync_variables(tuner) -> None:
    """TensorFlow's trainer updates the variables in place."""
