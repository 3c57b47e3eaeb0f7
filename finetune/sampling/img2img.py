"""img2img and variations: an image's latents noised to `strength`, then denoised with a prompt.

    strength 0   -> no step runs: the image's VAE round trip
    strength s   -> int(num_steps * s) DDIM steps (the last ones), starting from the image's latents
                    noised to the first of them (diffusers' StableDiffusionImg2ImgPipeline rule)
    strength 1   -> every step from pure noise: the image is ignored (text-to-image with the same noise)

The image's latents are the VAE posterior's mean times the latent scale (deterministic; diffusers
samples the posterior by default). Variations are img2img of one image with several seeds.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from PIL import Image

from finetune.errors import ConfigError
from finetune.sampling.ddim import SamplerSettings
from finetune.sampling.loop import StepHook, add_noise, alpha_at, denoise, start_index


def check_strength(strength, key: str = "generate.strength") -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= float(strength) <= 1.0:
        raise ConfigError(f"{key}={strength!r} must be a number in [0, 1] (0: the input image, 1: ignore it)")
    return float(strength)


def fit_image(image: np.ndarray, resolution: int, resample=Image.Resampling.LANCZOS) -> np.ndarray:
    """The centered square crop of `image` (uint8 [H, W, C]) resized to resolution x resolution
    (the data stage's `crop=center`)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top:top + side, left:left + side]
    if side == resolution:
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(crop).resize((resolution, resolution), resample))


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> float32 in [-1, 1]."""
    return np.asarray(images, dtype=np.float32) / 127.5 - 1.0


def encode_latents(vae_encoder, images: np.ndarray) -> np.ndarray:
    """Scaled latents [B, h, w, c] of uint8 images [B, H, W, 3]: posterior mean x the latent scale."""
    mean, _ = vae_encoder(to_model_range(images))
    return keras.ops.convert_to_numpy(mean).astype(np.float32) * np.float32(vae_encoder.spec.scaling_factor)


def img2img_latents(
    denoise_fn,
    settings: SamplerSettings,
    init_latents: np.ndarray,
    noise: np.ndarray,
    contexts: Sequence[np.ndarray],
    uncond: np.ndarray | None,
    strength: float,
    weights: Sequence[float] | None = None,
    on_step: StepHook | None = None,
    progress: bool = True,
    desc: str = "img2img",
) -> np.ndarray:
    """Denoised latents of `init_latents` [B, h, w, c] noised with `noise` (same shape) to `strength`."""
    strength = check_strength(strength)
    init_latents = np.asarray(init_latents, np.float32)
    if strength >= 1.0:
        start, latents = 0, np.array(noise, np.float32)
    else:
        start = start_index(settings.num_steps, strength)
        if start >= settings.num_steps:
            return init_latents.copy()
        latents = add_noise(init_latents, noise, alpha_at(settings, start))
    if on_step is not None:  # the modes that keep a region see the start latents too
        latents = on_step(latents, start - 1, alpha_at(settings, start), False)
    return denoise(denoise_fn, settings, latents, contexts, uncond, weights, start=start, on_step=on_step,
                   progress=progress, desc=desc)
