"""`StableDiffusionFineTuner`: the textual-inversion training step.

One step: pick cached VAE posteriors and captions, sample latents from the posteriors,
add noise at uniform random timesteps (DDPM schedule), let the frozen UNet predict the
noise from the text encoding of the captions, and take the MSE. Gradients flow only
into the text encoder's learned placeholder vectors.

Randomness is a pure function of (seed, step): every random draw uses stateless ops
seeded by the step counter, so a resumed run draws exactly what the uninterrupted run
would have drawn. Draws are made for the global batch and each replica keeps its rows, so
a run on several devices draws what a one-device run draws (finetune/training/distribute.py).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from finetune.data.pipeline import CAPTION, VARIANT
from finetune.diffusion.schedule import NoiseSchedule
from finetune.training.distribute import (
    global_batch_size,
    gradient_for_optimizer,
    local_rows,
    replica_position,
    step_logs,
)

# Distinct streams of the stateless RNG, combined with the step counter.
_STREAM_POSTERIOR, _STREAM_TIMESTEP, _STREAM_NOISE = 1, 2, 3


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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.text_encoder, self.unet = text_encoder, unet
        self.unet.trainable = False
        for layer in text_encoder.layers:
            layer.trainable = layer is text_encoder.token_embedding
        self.learned_vectors = text_encoder.token_embedding.learned_vectors
        # Cached per-variant posterior moments [M, h, w, 2C] and tokenized captions [K, L]: constants of the step.
        self.latent_moments = tf.constant(latent_moments, dtype="float32")
        self.caption_tokens = tf.constant(caption_tokens, dtype="int32")
        acp = schedule.alphas_cumprod
        self.sqrt_acp = tf.constant(np.sqrt(acp), dtype="float32")
        self.sqrt_one_minus_acp = tf.constant(np.sqrt(1.0 - acp), dtype="float32")
        self.num_timesteps = schedule.num_train_timesteps
        self.latent_scale = float(latent_scale)
        self.seed = int(seed)
        self.step_counter = keras.Variable(
            0, dtype="int64", trainable=False, name="step_counter", aggregation="only_first_replica"
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True  # every variable exists (Keras would otherwise try to build by calling it)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def _rng(self, stream: int):
        return tf.stack([tf.cast(self.seed, tf.int64) * 4 + stream, tf.cast(self.step_counter, tf.int64)])

    def sample_inputs(self, batch):
        """Noisy latents, timesteps, true noise and token ids for one batch (no gradients involved)."""
        moments = tf.gather(self.latent_moments, batch[:, VARIANT])
        mean, logvar = tf.split(moments, 2, axis=-1)
        shape = tf.shape(mean)
        local = shape[0]
        drawn = tf.concat([[global_batch_size(local)], shape[1:]], axis=0)
        posterior_noise = local_rows(tf.random.stateless_normal(drawn, self._rng(_STREAM_POSTERIOR)), local)
        latents = (mean + tf.exp(0.5 * logvar) * posterior_noise) * self.latent_scale
        timesteps = local_rows(tf.random.stateless_uniform(
            drawn[:1], self._rng(_STREAM_TIMESTEP), minval=0, maxval=self.num_timesteps, dtype=tf.int32
        ), local)
        noise = local_rows(tf.random.stateless_normal(drawn, self._rng(_STREAM_NOISE)), local)
        a = tf.gather(self.sqrt_acp, timesteps)[:, None, None, None]
        b = tf.gather(self.sqrt_one_minus_acp, timesteps)[:, None, None, None]
        tokens = tf.gather(self.caption_tokens, batch[:, CAPTION])
        return a * latents + b * noise, timesteps, noise, tokens

    def compute_noise_loss(self, noisy, timesteps, noise, tokens):
        context = self.text_encoder(tokens)
        predicted = self.unet(noisy, timesteps, context)
        return ops.mean(ops.square(ops.cast(predicted, "float32") - noise))

    def train_step(self, batch):
        noisy, timesteps, noise, tokens = self.sample_inputs(batch)
        with tf.GradientTape() as tape:
            loss = self.compute_noise_loss(noisy, timesteps, noise, tokens)
            scaled = self.optimizer.scale_loss(loss)
        gradient = tape.gradient(scaled, self.learned_vectors)
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)  # [num_vectors, D]: small
        gradient = gradient_for_optimizer(gradient)
        # The global gradient's norm before clipping: gradient_for_optimizer divided it by the number of
        # replicas, and the loss scale (mixed_float16; read before apply_gradients updates it) is divided out.
        scale = tf.cast(self.optimizer.scale_loss(1.0), "float32") / replica_position()[1]
        grad_norm = tf.norm(tf.cast(gradient, "float32")) / scale
        self.optimizer.apply_gradients([(gradient, self.learned_vectors)])
        self.step_counter.assign_add(1)
        self.loss_tracker.update_state(loss)
        # Keras averages these over the replicas: the loss becomes the global batch's.
        return step_logs({"loss": loss, "lr": self.optimizer.learning_rate, "grad_norm": grad_norm})
