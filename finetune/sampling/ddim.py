"""DDIM sampling with classifier-free guidance, independent of the denoising model.

The update rule follows the DDIM paper (Song et al. 2021, eq. 12 and eq. 16 for sigma_t)
with the conventions of the diffusers `DDIMScheduler` configured as in the Stable
Diffusion v1 `scheduler_config.json`: "leading" timestep spacing, `steps_offset=1`,
`set_alpha_to_one=False` (the last step goes to alphas_cumprod[0], not to 1),
`clip_sample=False`, `prediction_type="epsilon"`. With 50 steps the timesteps are
981, 961, ..., 21, 1.

Classifier-free guidance (Ho & Salimans 2022): eps = eps_uncond + g * (eps_cond - eps_uncond),
with both halves computed by one batched model call on concat([uncond, cond]).

Everything in the loop is NumPy; `denoise_fn` may be any callable (a Keras model, a
compiled `tf.function`, a toy function in tests) that returns something `np.asarray`
or `.numpy()` can convert.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from finetune.diffusion.schedule import NoiseSchedule
from finetune.errors import ConfigError

DenoiseFn = Callable[[np.ndarray, np.ndarray, np.ndarray], Any]


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class SamplerSettings:
    num_steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, (int, np.integer)) or self.num_steps < 1:
            raise ConfigError(f"sampler num_steps must be a positive integer, got {self.num_steps!r}")
        if not _is_real(self.guidance_scale) or not np.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ConfigError(
                f"sampler guidance_scale must be a finite number >= 0 (1 disables guidance), "
                f"got {self.guidance_scale!r}"
            )
        if not _is_real(self.eta) or not np.isfinite(self.eta) or self.eta < 0:
            raise ConfigError(f"sampler eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {self.eta!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"sampler seed must be a non-negative integer, got {self.seed!r}")


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1) -> np.ndarray:
    """Descending int64 timesteps of diffusers' DDIMScheduler with "leading" spacing.

    Rule (diffusers DDIMScheduler.set_timesteps, timestep_spacing="leading"):
    step_ratio = num_train_timesteps // num_steps; t_i = i * step_ratio + steps_offset,
    i = num_steps-1 .. 0.
    """
    if num_steps < 1 or num_steps > num_train_timesteps:
        raise ConfigError(
            f"sampler num_steps must be between 1 and {num_train_timesteps} (the training timesteps), got {num_steps}"
        )
    step_ratio = num_train_timesteps // num_steps
    timesteps = np.arange(num_steps, dtype=np.int64)[::-1] * step_ratio + steps_offset
    if timesteps[0] >= num_train_timesteps:
        # Only reachable with step_ratio == 1 and steps_offset >= 1 (e.g. 1000 steps), where
        # diffusers would index alphas_cumprod out of range; refuse instead.
        raise ConfigError(
            f"sampler num_steps={num_steps} with steps_offset={steps_offset} gives timestep {timesteps[0]} "
            f">= {num_train_timesteps}; use fewer steps"
        )
    return timesteps


def ddim_step(
    sample: np.ndarray,
    model_output: np.ndarray,
    alpha_prod_t: float,
    alpha_prod_t_prev: float,
    eta: float = 0.0,
    noise: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One DDIM update x_t -> x_prev for an epsilon-predicting model.

    Returns (prev_sample, pred_original_sample), both float32.

        pred_x0  = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)
        sigma_t  = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x_prev   = sqrt(a_prev) * pred_x0 + sqrt(1 - a_prev - sigma_t^2) * eps + sigma_t * noise

    `noise` (standard normal, same shape as `sample`) is required when eta > 0.
    """
    a_t = float(alpha_prod_t)
    a_prev = float(alpha_prod_t_prev)
    x = np.asarray(sample, dtype=np.float32)
    eps = np.asarray(model_output, dtype=np.float32)
    if x.shape != eps.shape:
        raise ValueError(f"ddim_step: sample shape {x.shape} != model_output shape {eps.shape}")
    beta_t = 1.0 - a_t
    beta_prev = 1.0 - a_prev

    pred_x0 = (x - np.float32(np.sqrt(beta_t)) * eps) / np.float32(np.sqrt(a_t))

    variance = (beta_prev / beta_t) * (1.0 - a_t / a_prev)
    std_dev_t = float(eta) * np.sqrt(max(variance, 0.0))
    direction_coef = np.sqrt(max(1.0 - a_prev - std_dev_t**2, 0.0))

    prev = np.float32(np.sqrt(a_prev)) * pred_x0 + np.float32(direction_coef) * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step: eta > 0 needs a noise array")
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != x.shape:
            raise ValueError(f"ddim_step: noise shape {noise.shape} != sample shape {x.shape}")
        prev = prev + np.float32(std_dev_t) * noise
    return prev.astype(np.float32, copy=False), pred_x0.astype(np.float32, copy=False)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x, dtype=np.float32)


class DDIMSampler:
    """DDIM sampler; `sample` runs the whole denoising loop for one batch."""

    def __init__(self, schedule: NoiseSchedule, settings: SamplerSettings):
        self.schedule = schedule
        self.settings = settings
        self.timesteps = ddim_timesteps(settings.num_steps, schedule.num_train_timesteps)
        self._alphas_cumprod = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
        # set_alpha_to_one=False: the step past t=0 uses alphas_cumprod[0].
        self._final_alpha_cumprod = float(self._alphas_cumprod[0])
        self._step_ratio = schedule.num_train_timesteps // settings.num_steps

    def alpha_pair(self, t: int) -> tuple[float, float]:
        """(alphas_cumprod[t], alphas_cumprod[t - step_ratio] or the final alpha)."""
        prev_t = int(t) - self._step_ratio
        a_t = float(self._alphas_cumprod[int(t)])
        a_prev = float(self._alphas_cumprod[prev_t]) if prev_t >= 0 else self._final_alpha_cumprod
        return a_t, a_prev

    def sample(
        self,
        denoise_fn: DenoiseFn,
        context: Any,
        uncond_context: Any,
        latent_shape: tuple[int, int, int],
        initial_noise: np.ndarray | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Denoise from pure noise to latents [B, h, w, c] float32 (NHWC).

        `context` and `uncond_context` are [B, L, D] text encodings (the unconditional one
        usually encodes the empty prompt). `uncond_context` is not used when
        guidance_scale == 1 (and may then be None).
        """
        s = self.settings
        cond = _to_numpy(context)
        if cond.ndim != 3:
            raise ValueError(f"context must be [B, L, D], got shape {cond.shape}")
        batch = cond.shape[0]
        guided = s.guidance_scale != 1.0
        if guided:
            if uncond_context is None:
                raise ValueError("uncond_context is required when guidance_scale != 1")
            uncond = _to_numpy(uncond_context)
            if uncond.shape[1:] != cond.shape[1:] or uncond.shape[0] not in (1, batch):
                raise ValueError(f"uncond_context shape {uncond.shape} does not match context shape {cond.shape}")
            if uncond.shape[0] != batch:
                uncond = np.broadcast_to(uncond, cond.shape)
            model_context = np.ascontiguousarray(np.concatenate([uncond, cond], axis=0))
        else:
            model_context = cond

        shape = (batch, *tuple(int(d) for d in latent_shape))
        if len(shape) != 4:
            raise ValueError(f"latent_shape must be (h, w, c), got {latent_shape!r}")
        rng = np.random.default_rng(s.seed)
        if initial_noise is None:
            # init_noise_sigma is 1 for DDIM, so the start latents are plain standard normal.
            latents = rng.standard_normal(shape, dtype=np.float32)
        else:
            latents = np.array(initial_noise, dtype=np.float32)
            if latents.shape != shape:
                raise ValueError(f"initial_noise shape {latents.shape} != expected {shape}")

        for t in tqdm(self.timesteps, desc="DDIM", leave=False, disable=not progress):
            n = 2 * batch if guided else batch
            model_in = np.concatenate([latents, latents], axis=0) if guided else latents
            t_batch = np.full((n,), int(t), dtype=np.int32)
            eps = _to_numpy(denoise_fn(model_in, t_batch, model_context))
            if eps.shape != model_in.shape:
                raise ValueError(f"denoise_fn returned shape {eps.shape}, expected {model_in.shape}")
            if guided:
                eps_uncond, eps_cond = eps[:batch], eps[batch:]
                eps = eps_uncond + np.float32(s.guidance_scale) * (eps_cond - eps_uncond)

            a_t, a_prev = self.alpha_pair(int(t))
            noise = rng.standard_normal(shape, dtype=np.float32) if s.eta > 0 else None
            latents, _ = ddim_step(latents, eps, a_t, a_prev, eta=s.eta, noise=noise)
        return latents
