"""Render prompts with the learned token: text encoding, DDIM with guidance, VAE decoding."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from finetune.backends import compiled_call
from finetune.diffusion.schedule import NoiseSchedule
from finetune.sampling.ddim import DDIMSampler, SamplerSettings


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Map images in [-1, 1] (any shape) to uint8 [0, 255]: clip, scale, round."""
    x = np.clip(np.asarray(images, dtype=np.float32), -1.0, 1.0)
    x = np.nan_to_num(x, nan=0.0)
    return np.rint((x + 1.0) * 127.5).astype(np.uint8)


def expand_prompt(prompt: str, placeholder: str) -> str:
    """`{}` in an eval prompt stands for the placeholder token."""
    return prompt.replace("{}", placeholder)


@dataclass
class RenderedImage:
    prompt: str
    seed: int
    image: np.ndarray  # uint8 [H, W, 3]

    @property
    def label(self) -> str:
        return f"{self.prompt} (seed {self.seed})"


class PromptRenderer:
    def __init__(self, tokenizer, text_encoder, unet, vae_decoder, resolution: int, jit_compile: bool = False):
        self.tokenizer, self.text_encoder, self.vae_decoder = tokenizer, text_encoder, vae_decoder
        factor = vae_decoder.spec.downsampling_factor
        self.latent_shape = (resolution // factor, resolution // factor, vae_decoder.spec.latent_channels)
        self.schedule = NoiseSchedule()
        self._denoise = compiled_call(unet, jit_compile)
        self._decode = compiled_call(vae_decoder, jit_compile)

    @property
    def denoise_fn(self):
        """The compiled UNet call (latents, timesteps, context) -> predicted noise, for the loops of
        finetune.sampling (img2img, inpaint, mix, walk)."""
        return self._denoise

    def noise(self, seeds, latent_shape: tuple[int, int, int] | None = None) -> np.ndarray:
        """The initial noise of each seed [len(seeds), h, w, c], as `sample_latents` draws it."""
        shape = tuple(latent_shape or self.latent_shape)
        return np.stack([np.random.default_rng(s).standard_normal(shape, dtype=np.float32) for s in seeds])

    def encode(self, prompts: list[str]) -> np.ndarray:
        return keras.ops.convert_to_numpy(self.text_encoder(self.tokenizer(prompts)))

    def sample_latents(self, prompts: list[str], settings: SamplerSettings, images_per_prompt: int = 1,
                       negative_prompt: str = "", progress: bool = True) -> np.ndarray:
        """Denoised latents [len(prompts) * images_per_prompt, h, w, c], prompt-major; image i of every
        prompt starts from the noise of seed `settings.seed + i`, so prompts compare like for like."""
        seeds = [settings.seed + i for i in range(images_per_prompt)]
        context = self.encode([p for p in prompts for _ in seeds])
        uncond = self.encode([negative_prompt])
        noise = np.stack([np.random.default_rng(s).standard_normal(self.latent_shape, dtype=np.float32)
                          for _ in prompts for s in seeds])
        sampler = DDIMSampler(self.schedule, settings)
        return sampler.sample(self._denoise, context, uncond, self.latent_shape, initial_noise=noise, progress=progress)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Images in [-1, 1] (float32 [N, H, W, 3]) of latents."""
        return keras.ops.convert_to_numpy(self._decode(latents)).astype(np.float32)

    def render(
        self, prompts: list[str], settings: SamplerSettings, images_per_prompt: int = 1,
        negative_prompt: str = "", progress: bool = True,
    ) -> list[RenderedImage]:
        """Image i of every prompt starts from the noise of seed `settings.seed + i`, so prompts compare like for like."""
        latents = self.sample_latents(prompts, settings, images_per_prompt, negative_prompt, progress)
        images = to_uint8(self.decode(latents))
        jobs = [(p, settings.seed + i) for p in prompts for i in range(images_per_prompt)]
        return [RenderedImage(p, s, img) for (p, s), img in zip(jobs, images)]
