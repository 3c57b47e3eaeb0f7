"""Sampling: DDIM with classifier-free guidance (`ddim`), and the renderer that turns prompts
into images with a tokenizer, text encoder, UNet and VAE decoder (`renderer`)."""

from finetune.sampling.ddim import DDIMSampler, SamplerSettings, ddim_step, ddim_timesteps

__all__ = ["DDIMSampler", "SamplerSettings", "ddim_step", "ddim_timesteps"]
