"""Stage 3: the denoising UNet on toy-world latents.

The pool is encoded once with the trained (normalized) VAE encoder; its posterior moments
are cached and every step samples latents from them. Then, as SD v1 was trained:
epsilon prediction, uniform timesteps, the scaled_linear DDPM schedule, the text encoding
of a caption drawn fresh for each image every step, and the empty prompt "" instead of the
caption with probability `caption_dropout` (what classifier-free guidance needs).
AdamW with warmup + cosine decay and global-norm clipping; an EMA of the UNet weights
(decay `ema_decay`, warmed up) is what the stage returns.

With `min_snr_gamma`, each sample's squared error is weighted by min(SNR(t), gamma) / SNR(t)
(Min-SNR weighting, Hang et al. 2023, for epsilon prediction): the low-noise timesteps,
whose conflicting fine-detail gradients slow training down, count less; the prediction
target stays the noise. None trains with the plain mean squared error.

The text encoder from the CLIP stage is frozen by default (`text_learning_rate=0`); with
a positive rate it is trained jointly by its own AdamW (warmup + cosine as well).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from finetune.diffusion.schedule import NoiseSchedule
from finetune.evaluation.judge import to_model_images
from finetune.models.presets import Preset
from finetune.models.unet import UNet
from finetune.pretraining.common import (
    EMA,
    batch_indices,
    data_fingerprint,
    make_optimizer,
    resume_point,
    run_steps,
    step_rng,
    watched_gradients,
)
from finetune.pretraining.config import UNetStageConfig
from finetune.tokens.tokenizer import ClipTokenizer
from finetune.toyworld import caption

NO_DECAY = ("bias", "gamma", "beta", "table", "position_embedding")


def encode_pool(encoder, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Posterior moments [N, h, w, 2C] (mean | logvar) of uint8 images, computed once."""
    encode = tf.function(lambda x: tf.concat(encoder(x), axis=-1), reduce_retracing=True)
    return np.concatenate([encode(tf.constant(to_model_images(images[i : i + batch_size]))).numpy()
                           for i in range(0, len(images), batch_size)])


def noisy_batch(moments: np.ndarray, timesteps: np.ndarray, schedule: NoiseSchedule, scale: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(x_t, noise): latents sampled from the posteriors, scaled, noised to `timesteps` (float32)."""
    mean, logvar = np.split(moments, 2, axis=-1)
    latents = (mean + np.exp(0.5 * logvar) * rng.standard_normal(mean.shape, dtype=np.float32)) * scale
    noise = rng.standard_normal(mean.shape, dtype=np.float32)
    acp = schedule.alphas_cumprod[timesteps].astype(np.float32)[:, None, None, None]
    return (np.sqrt(acp) * latents + np.sqrt(1.0 - acp) * noise).astype(np.float32), noise


def train_unet(
    preset: Preset,
    moments: np.ndarray,
    scenes: list,
    text_encoder,
    stage_dir: str | Path,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float = UNetStageConfig.learning_rate,
    warmup_steps: int = UNetStageConfig.warmup_steps,
    weight_decay: float = UNetStageConfig.weight_decay,
    grad_clip: float | None = UNetStageConfig.grad_clip,
    ema_decay: float = UNetStageConfig.ema_decay,
    caption_dropout: float = UNetStageConfig.caption_dropout,
    min_snr_gamma: float | None = UNetStageConfig.min_snr_gamma,
    text_learning_rate: float = UNetStageConfig.text_learning_rate,
    seed: int = 0,
    init_seed: int = 0,
    checkpoint_every: int = UNetStageConfig.checkpoint_every,
    keep_checkpoints: int = UNetStageConfig.keep_checkpoints,
    progress: bool = True,
) -> dict:
    """Train the UNet on cached posterior `moments` [N, h, w, 2C] of the pool and its `scenes`.

    Returns {"unet" (EMA weights), "text_encoder", "run"}.
    """
    settings = {k: v for k, v in locals().items() if k not in ("moments", "scenes", "text_encoder", "stage_dir",
                                                                 "progress", "preset", "checkpoint_every",
                                                                 "keep_checkpoints")}
    settings.update(preset=preset.name, unet=repr(preset.unet), data=data_fingerprint(scenes), pool=len(moments))
    resume_point(Path(stage_dir), settings, steps, "unet")  # a settings mismatch fails before any work
    schedule = NoiseSchedule()
    tokenizer = ClipTokenizer(max_length=preset.text_encoder.max_length, pad_id=preset.pad_id)
    keras.utils.set_random_seed(init_seed)
    unet = UNet(preset.unet)
    unet_vars = unet.trainable_variables
    optimizer = make_optimizer(learning_rate, steps, warmup_steps, weight_decay, grad_clip, no_decay=NO_DECAY)
    optimizer.build(unet_vars)
    ema = EMA(unet_vars, ema_decay)
    groups = {"model": unet.weights, "optimizer": optimizer.variables, "ema": ema.shadow}

    joint = text_learning_rate > 0
    if joint:
        table = text_encoder.token_embedding.table
        text_vars = text_encoder.trainable_variables + [table]
        text_optimizer = make_optimizer(text_learning_rate, steps, warmup_steps, weight_decay, grad_clip, NO_DECAY)
        text_optimizer.build(text_vars)
        groups.update(text_encoder=text_encoder.weights, text_optimizer=text_optimizer.variables)

    snr = schedule.alphas_cumprod / (1.0 - schedule.alphas_cumprod)
    weights = np.minimum(snr, min_snr_gamma) / snr if min_snr_gamma else np.ones_like(snr)
    loss_weights = tf.constant(weights, tf.float32)

    @tf.function
    def train_step(noisy, timesteps, noise, ids, step):
        with tf.GradientTape() as tape:
            if joint:
                tape.watch(table.value)  # not a trainable variable: watch it explicitly
            context = text_encoder(ids)
            if not joint:
                context = tf.stop_gradient(context)
            per_sample = tf.reduce_mean(tf.square(unet(noisy, timesteps, context) - noise), axis=(1, 2, 3))
            loss = tf.reduce_mean(tf.gather(loss_weights, timesteps) * per_sample)
        if joint:
            grads = watched_gradients(tape, loss, unet_vars + text_vars)
            optimizer.apply_gradients(zip(grads[: len(unet_vars)], unet_vars))
            text_optimizer.apply_gradients(zip(grads[len(unet_vars):], text_vars))
        else:
            optimizer.apply_gradients(zip(watched_gradients(tape, loss, unet_vars), unet_vars))
        ema.update(step)
        return loss

    scale = preset.vae.scaling_factor
    T = schedule.num_train_timesteps

    def step_fn(step: int) -> float:
        idx = batch_indices(len(moments), batch_size, step, seed, "unet")
        rng = step_rng(seed, "unet", step)
        texts = [caption(scenes[i], rng) for i in idx]
        drop = rng.random(batch_size) < caption_dropout
        texts = ["" if d else t for t, d in zip(texts, drop)]
        timesteps = rng.integers(0, T, batch_size)
        noisy, noise = noisy_batch(moments[idx], timesteps, schedule, scale, rng)
        return train_step(tf.constant(noisy), tf.constant(timesteps, tf.int32), tf.constant(noise),
                          tf.constant(tokenizer(texts)), tf.constant(step, tf.int64)).numpy()

    run = run_steps(Path(stage_dir), steps, step_fn, groups, settings, checkpoint_every, keep_checkpoints,
                    desc="unet", progress=progress)
    ema.copy_to_model()
    return {"unet": unet, "text_encoder": text_encoder, "run": run}
