"""The textual-inversion gradient step on JAX: a pure function of Keras' training state.

Keras' JAX trainer jits `train_step(state, data)` with state = (trainable, non-trainable,
optimizer, metrics variable values) and keeps the newest state outside the variables while
it fits. Here the shared loss runs inside a `StatelessScope` that maps every variable to its
value in `state`; `jax.value_and_grad` differentiates it with respect to the trainable
values (only the learned vectors), and the optimizer's `stateless_apply` updates them.
Under `keras.distribution.DataParallel` the step sees the global batch (sharded over the
devices): its random draws are the one-device draws, its gradient the global mean's.
"""

from __future__ import annotations

import jax
import keras
import numpy as np
from keras import ops


def _mapping(variables, values):
    return list(zip(variables, values))


def _position(variables, variable) -> int:
    """Where `variable` is in `variables`, by identity (a Keras variable's `==` compares values)."""
    return next(i for i, v in enumerate(variables) if v is variable)


def _loss_and_gradients(tuner, trainable, non_trainable, optimizer_values, batch, step):
    """(scaled loss, loss) and the gradients of the scaled loss for the trainable values."""
    frozen = _mapping(tuner.non_trainable_variables, non_trainable)
    with keras.StatelessScope(state_mapping=frozen):
        noisy, timesteps, noise, tokens = tuner.sample_inputs(batch, step)

    def loss_fn(trainable_values):
        with keras.StatelessScope(state_mapping=_mapping(tuner.trainable_variables, trainable_values) + frozen):
            objective, loss = tuner.objective(noisy, timesteps, noise, tokens)
        with keras.StatelessScope(state_mapping=_mapping(tuner.optimizer.variables, optimizer_values)):
            scaled = tuner.optimizer.scale_loss(objective)
        return scaled, loss

    return jax.value_and_grad(loss_fn, has_aux=True)(trainable)


def train_step(tuner, state, data):
    trainable, non_trainable, optimizer_values, metrics_values = state
    batch = data[0] if isinstance(data, (tuple, list)) else data
    counter = _position(tuner.non_trainable_variables, tuner.step_counter)
    step = non_trainable[counter]
    (_, loss), gradients = _loss_and_gradients(tuner, trainable, non_trainable, optimizer_values, batch, step)
    with keras.StatelessScope(state_mapping=_mapping(tuner.optimizer.variables, optimizer_values)):
        # The gradient's norm before clipping, the loss scale (mixed_float16) divided out; the rate of this update.
        scale = ops.cast(tuner.optimizer.scale_loss(1.0), "float32")
        grad_norm = ops.sqrt(sum(ops.sum(ops.square(ops.cast(g, "float32"))) for g in gradients)) / scale
        lr = ops.convert_to_tensor(tuner.optimizer.learning_rate)
    trainable, optimizer_values = tuner.optimizer.stateless_apply(optimizer_values, gradients, trainable)
    non_trainable = list(non_trainable)
    non_trainable[counter] = step + 1
    logs = {"loss": loss, "lr": lr, "grad_norm": grad_norm}
    return logs, (trainable, non_trainable, optimizer_values, metrics_values)


def loss_and_gradient(tuner, batch, step: int) -> tuple[float, np.ndarray]:
    """The loss of `batch` at update `step` and its gradient for the learned vectors (no update)."""
    values = lambda variables: [v.value for v in variables]  # noqa: E731
    (_, loss), gradients = _loss_and_gradients(tuner, values(tuner.trainable_variables),
                                               values(tuner.non_trainable_variables),
                                               values(tuner.optimizer.variables), batch, step)
    index = _position(tuner.trainable_variables, tuner.learned_vectors)
    return float(loss), np.asarray(gradients[index], dtype="float32")


def current_vectors(tuner) -> np.ndarray:
    """The newest learned vectors: from the fit's state while it runs (without syncing every variable)."""
    state = getattr(tuner, "_jax_state", None)
    if state and not getattr(tuner, "_jax_state_synced", True):
        index = _position(tuner.trainable_variables, tuner.learned_vectors)
        return np.asarray(state["trainable_variables"][index], dtype="float32")
    return np.asarray(ops.convert_to_numpy(tuner.learned_vectors), dtype="float32")


def sync_variables(tuner) -> None:
    tuner.jax_state_sync()
