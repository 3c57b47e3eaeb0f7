"""`StableDiffusionFineTuner`: the textual-inversion training step.

One step: pick cached VAE posteriors and captions, sample latents from the posteriors,
add noise at uniform random timesteps (DDPM schedule), let the frozen UNet predict the
noise from the text encoding of the captions, and take the MSE. Gradients flow only
into the text encoder's learned placeholder vectors.

The loss is one definition in `keras.ops` (`sample_inputs` + `objective`: `noise_loss` plus the
optional editability penalty, finetune/training/editability.py); the gradient
step around it is the backend's own (`step_tf.py`: `tf.GradientTape`; `step_jax.py`:
`jax.value_and_grad` over Keras' stateless state), chosen when the class is built.

Randomness is a pure function of (seed, step) (finetune/training/rng.py): the same draws on
every backend, and a resumed run draws exactly what the uninterrupted run would have drawn.
Draws are indexed by the row of the global batch, so replicas that each hold some rows draw
what a one-device run draws (finetune/training/distribute.py).
"""

from __future__ import annotations

import importlib

import keras
import numpy as np
from keras import ops

from finetune.backends import name as backend_name
from finetune.data.columns import CAPTION, VARIANT
from finetune.diffusion.schedule import NoiseSchedule
from finetune.training import rng
from finetune.training.editability import l2_penalty

# Distinct streams of the counter-based RNG, combined with the step counter.
STREAM_POSTERIOR, STREAM_TIMESTEP, STREAM_NOISE = 1, 2, 3
STEP_MODULES = {"tensorflow": "finetune.training.step_tf", "jax": "finetune.training.step_jax"}


class StableDiffusionFineTuner(keras.Model):
    def __init__(
        self,
        text_encoder: keras.Model,
        unet: keras.Model,
        latent_moments: np.ndarray,
        caption_tokens: np.ndarray,
        schedule: NoiseSchedule,
        latent_scale: float,
        seed: int = 0,
        initial_vectors: np.ndarray | None = None,
        l2_to_initializer: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.text_encoder, self.unet = text_encoder, unet
        self.unet.trainable = False
        for layer in text_encoder.layers:
            layer.trainable = layer is text_encoder.token_embedding
        self.learned_vectors = text_encoder.token_embedding.learned_vectors
        # Cached per-variant posterior moments [M, h, w, 2C] and tokenized captions [K, L]: constants of the step.
        self.latent_moments = ops.convert_to_tensor(np.asarray(latent_moments, "float32"))
        self.caption_tokens = ops.convert_to_tensor(np.asarray(caption_tokens, "int32"))
        acp = np.asarray(schedule.alphas_cumprod, np.float64)
        self.sqrt_acp = ops.convert_to_tensor(np.sqrt(acp).astype("float32"))
        self.sqrt_one_minus_acp = ops.convert_to_tensor(np.sqrt(1.0 - acp).astype("float32"))
        self.num_timesteps = schedule.num_train_timesteps
        self.latent_scale = float(latent_scale)
        self.seed = int(seed)
        # The editability penalty (finetune/training/editability.py): weight x ||v - v_start||^2.
        self.l2_to_initializer = float(l2_to_initializer)
        self.start_vectors = None if initial_vectors is None else np.asarray(initial_vectors, "float32")
        self.step_counter = keras.Variable(
            0, dtype="int32", trainable=False, name="step_counter", aggregation="only_first_replica"
        )
        self.backend_step = importlib.import_module(STEP_MODULES[backend_name()])
        self.built = True  # every variable exists (Keras would otherwise try to build by calling it)

    def sample_inputs(self, batch, step, first_row=0, seed=None):
        """Noisy latents, timesteps, true noise and token ids for the rows [first_row, first_row + B) of the
        global batch of update `step` (micro-step counter). No gradients involved. `seed`: draw from
        another seed's streams (the validation batch); default the trainer's."""
        seed = self.seed if seed is None else int(seed)
        batch = ops.convert_to_tensor(batch)
        moments = ops.take(self.latent_moments, batch[:, VARIANT], axis=0)
        mean, logvar = ops.split(moments, 2, axis=-1)
        rows, row_shape = batch.shape[0], tuple(mean.shape[1:])
        if rows is None:  # TensorFlow traces the last, partial batch with an unknown size
            rows = ops.shape(batch)[0]

        def draw_normal(stream):
            return rng.normal(rng.stream_key(seed, stream, step), first_row, rows, row_shape)

        latents = (mean + ops.exp(0.5 * logvar) * draw_normal(STREAM_POSTERIOR)) * self.latent_scale
        timesteps = rng.integers(rng.stream_key(seed, STREAM_TIMESTEP, step), first_row, rows, self.num_timesteps)
        noise = draw_normal(STREAM_NOISE)
        a = ops.take(self.sqrt_acp, timesteps, axis=0)[:, None, None, None]
        b = ops.take(self.sqrt_one_minus_acp, timesteps, axis=0)[:, None, None, None]
        tokens = ops.take(self.caption_tokens, batch[:, CAPTION], axis=0)
        return a * latents + b * noise, timesteps, noise, tokens

    def noise_loss(self, noisy, timesteps, noise, tokens):
        """MSE of the UNet's noise prediction, float32 whatever the compute dtype."""
        context = self.text_encoder(tokens)
        predicted = self.unet(noisy, timesteps, context)
        return ops.mean(ops.square(ops.cast(predicted, "float32") - noise))

    def objective(self, noisy, timesteps, noise, tokens):
        """(what the gradient minimizes, the noise MSE that is logged): the MSE plus the editability penalty."""
        loss = self.noise_loss(noisy, timesteps, noise, tokens)
        if not self.l2_to_initializer:
            return loss, loss
        return loss + l2_penalty(self.learned_vectors, self.start_vectors, self.l2_to_initializer), loss

    def train_step(self, *args):
        # TensorFlow's trainer calls train_step(data); JAX's calls train_step(state, data).
        return self.backend_step.train_step(self, *args)

    def loss_and_gradient(self, batch, step: int) -> tuple[float, np.ndarray]:
        """The loss of `batch` (int32 [B, 2]) at update `step` and its gradient for the learned vectors; no update."""
        return self.backend_step.loss_and_gradient(self, batch, step)

    def current_vectors(self) -> np.ndarray:
        """The learned vectors [num_vectors, D] as they are now (also in the middle of a JAX fit)."""
        return self.backend_step.current_vectors(self)

    def sync_variables(self) -> None:
        """Make every Keras variable hold the newest values (a JAX fit keeps them in its own state)."""
        self.backend_step.sync_variables(self)
