"""Stage 1: the KL autoencoder.

Loss per image (means over pixels, images in [-1, 1]):

    l1 |x' - x| + l2 (x' - x)^2 + edge (|dx x' - dx x| + |dy x' - dy x|) + kl_weight * KL / pixels

where x' decodes a sample z = mean + std * eps of the posterior and KL is the summed
KL divergence of the posterior from N(0, I) (so kl_weight 1e-6 is SD's weighting). The
posterior starts narrow (`initial_logvar`), so the decoder sees signal from the first step.
The edge term (differences of neighbouring pixels) keeps shape outlines crisp; no
perceptual network is involved.

After training, the per-channel mean and std of the latents (posterior samples) over a
sample of the pool are folded into the weights (`fold_latent_normalization`): the
encoder then emits ~N(0, 1) latents per channel and the decoder takes them, so the
preset's `scaling_factor` is 1 (channel spreads differ several-fold otherwise, which a
single SD-style scale cannot fix).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from finetune.evaluation.judge import to_model_images
from finetune.models.presets import Preset
from finetune.models.vae import VAEDecoder, VAEEncoder
from finetune.pretraining.common import (
    batch_indices,
    data_fingerprint,
    make_optimizer,
    resume_point,
    run_steps,
    step_rng,
    watched_gradients,
)
from finetune.pretraining.config import VAEStageConfig


def vae_loss(images, decoded, mean, logvar, l1_weight: float, l2_weight: float, edge_weight: float, kl_weight: float):
    diff = decoded - images
    loss = l1_weight * tf.reduce_mean(tf.abs(diff)) + l2_weight * tf.reduce_mean(tf.square(diff))
    if edge_weight:
        dx = lambda x: x[:, :, 1:] - x[:, :, :-1]  # noqa: E731
        dy = lambda x: x[:, 1:] - x[:, :-1]  # noqa: E731
        edge = tf.reduce_mean(tf.abs(dx(decoded) - dx(images))) + tf.reduce_mean(tf.abs(dy(decoded) - dy(images)))
        loss += edge_weight * edge
    kl = 0.5 * tf.reduce_sum(tf.square(mean) + tf.exp(logvar) - 1.0 - logvar) / tf.cast(tf.size(images), tf.float32)
    return loss + kl_weight * kl


def posterior_sample(encoder: VAEEncoder, images: np.ndarray, batch_size: int, seed: int) -> np.ndarray:
    """Latent samples mean + std * eps (unscaled) of `images` (uint8), [N, h, w, C]."""
    encode = tf.function(lambda x: encoder(x), reduce_retracing=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(0, len(images), batch_size):
        mean, logvar = (t.numpy() for t in encode(tf.constant(to_model_images(images[i : i + batch_size]))))
        out.append(mean + np.exp(0.5 * logvar) * rng.standard_normal(mean.shape, dtype=np.float32))
    return np.concatenate(out)


def latent_statistics(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of latents [N, h, w, C] (float64)."""
    flat = latents.reshape(-1, latents.shape[-1]).astype(np.float64)
    return flat.mean(axis=0), flat.std(axis=0)


def fold_latent_normalization(encoder: VAEEncoder, decoder: VAEDecoder, mean: np.ndarray, std: np.ndarray) -> None:
    """Make the encoder emit (z - mean) / std per channel and the decoder accept it, in place.

    Encoder: the mean half of `quant_conv` is scaled and shifted, the log-variance half
    shifted by -2 log std. Decoder: `post_quant_conv` takes z = std * z' + mean, so its
    kernel's input rows are scaled by std and its bias gains kernel^T mean. Decoding
    an encoding gives the same image as before (up to float rounding).
    """
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    c = encoder.spec.latent_channels
    if mean.shape != (c,) or std.shape != (c,) or np.any(std <= 0):
        raise ValueError(f"need {c} per-channel means and positive stds, got {mean.shape} and {std}")

    quant = encoder.quant_conv
    kernel, bias = (keras.ops.convert_to_numpy(w).astype(np.float64) for w in (quant.kernel, quant.bias))
    kernel[..., :c] /= std
    bias[:c] = (bias[:c] - mean) / std
    bias[c:] -= 2.0 * np.log(std)
    quant.kernel.assign(kernel.astype(np.float32))
    quant.bias.assign(bias.astype(np.float32))

    post = decoder.blocks[0]
    assert post.name == "post_quant_conv", post.name
    kernel, bias = (keras.ops.convert_to_numpy(w).astype(np.float64) for w in (post.kernel, post.bias))
    bias = bias + mean @ kernel[0, 0]  # [C_in] @ [C_in, C_out]
    kernel = kernel * std[None, None, :, None]
    post.kernel.assign(kernel.astype(np.float32))
    post.bias.assign(bias.astype(np.float32))


def set_initial_logvar(encoder: VAEEncoder, logvar: float) -> None:
    """Start the posterior log-variance near `logvar` (bias of quant_conv's logvar half).

    With the usual start (logvar ~ 0, std 1) the first latents the decoder sees are mostly
    noise, and the small KL weight lets the encoder shrink it only slowly.
    """
    c = encoder.spec.latent_channels
    bias = keras.ops.convert_to_numpy(encoder.quant_conv.bias).copy()
    bias[c:] = logvar
    encoder.quant_conv.bias.assign(bias)


def train_vae(
    preset: Preset,
    images: np.ndarray,
    stage_dir: str | Path,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float = VAEStageConfig.learning_rate,
    warmup_steps: int = VAEStageConfig.warmup_steps,
    weight_decay: float = VAEStageConfig.weight_decay,
    l1_weight: float = VAEStageConfig.l1_weight,
    l2_weight: float = VAEStageConfig.l2_weight,
    edge_weight: float = VAEStageConfig.edge_weight,
    kl_weight: float = VAEStageConfig.kl_weight,
    grad_clip: float | None = VAEStageConfig.grad_clip,
    initial_logvar: float = VAEStageConfig.initial_logvar,
    stats_samples: int = VAEStageConfig.stats_samples,
    seed: int = 0,
    init_seed: int = 0,
    checkpoint_every: int = VAEStageConfig.checkpoint_every,
    keep_checkpoints: int = VAEStageConfig.keep_checkpoints,
    progress: bool = True,
) -> dict:
    """Train the VAE on `images` (uint8 [N, H, W, 3], the pool), fold the latent normalization in.

    Returns {"encoder", "decoder", "latent_mean", "latent_std", "run"} with the models
    normalized (their weights are what the stage's weight files hold).
    """
    settings = {k: v for k, v in locals().items() if k not in ("images", "stage_dir", "progress", "preset",
                                                                 "checkpoint_every", "keep_checkpoints")}
    settings.update(preset=preset.name, vae=repr(preset.vae), data=data_fingerprint(images))
    resume_point(Path(stage_dir), settings, steps, "vae")  # a settings mismatch fails before any work
    keras.utils.set_random_seed(init_seed)
    encoder, decoder = VAEEncoder(preset.vae), VAEDecoder(preset.vae)
    set_initial_logvar(encoder, initial_logvar)
    variables = encoder.trainable_variables + decoder.trainable_variables
    optimizer = make_optimizer(learning_rate, steps, warmup_steps, weight_decay, grad_clip)
    optimizer.build(variables)
    scale = preset.vae.scaling_factor
    latent_hw = preset.resolution // preset.vae.downsampling_factor
    latent_shape = (batch_size, latent_hw, latent_hw, preset.vae.latent_channels)

    @tf.function
    def train_step(x, eps):
        with tf.GradientTape() as tape:
            mean, logvar = encoder(x)
            z = mean + tf.exp(0.5 * logvar) * eps
            decoded = decoder(z * scale)
            loss = vae_loss(x, decoded, mean, logvar, l1_weight, l2_weight, edge_weight, kl_weight)
        optimizer.apply_gradients(zip(watched_gradients(tape, loss, variables), variables))
        return loss

    def step_fn(step: int) -> float:
        idx = batch_indices(len(images), batch_size, step, seed, "vae")
        eps = step_rng(seed, "vae", step).standard_normal(latent_shape, dtype=np.float32)
        return train_step(tf.constant(to_model_images(images[idx])), tf.constant(eps)).numpy()

    groups = {"model": encoder.weights + decoder.weights, "optimizer": optimizer.variables}
    run = run_steps(Path(stage_dir), steps, step_fn, groups, settings, checkpoint_every, keep_checkpoints,
                    desc="vae", progress=progress)

    sample = images[: min(stats_samples, len(images))]
    mean, std = latent_statistics(posterior_sample(encoder, sample, 256, seed))
    fold_latent_normalization(encoder, decoder, mean, std)
    return {"encoder": encoder, "decoder": decoder, "latent_mean": mean.tolist(), "latent_std": std.tolist(), "run": run}
