"""The DDIM loop every generation mode shares: start anywhere in the schedule, guide toward one or
several text encodings with weights, and let a mode touch the latents after every step.

With one encoding of weight 1, starting at step 0, no step hook, this is exactly
`DDIMSampler.sample` (same model calls, same arithmetic, same eta noise draws).

Guidance toward several prompts (composable guidance, Liu et al. 2022):

    eps = eps_uncond + g * sum_k w_k * (eps_k - eps_uncond)

with one batched model call on concat([uncond, cond_1, ..., cond_K]).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from finetune.diffusion.schedule import NoiseSchedule
from finetune.sampling.ddim import DDIMSampler, SamplerSettings, ddim_step


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x, dtype=np.float32)

# hook(latents after the step, index of the step in the run, alpha_cumprod the latents are at, is_last) -> latents
StepHook = Callable[[np.ndarray, int, float, bool], np.ndarray]


def start_index(num_steps: int, strength: float) -> int:
    """Index of the first DDIM step run when denoising an image noised to `strength` (diffusers'
    img2img rule: int(num_steps * strength) steps run, the last ones)."""
    return num_steps - min(int(num_steps * strength), num_steps)


def denoise(
    denoise_fn,
    settings: SamplerSettings,
    latents: np.ndarray,
    contexts: Sequence[np.ndarray],
    uncond: np.ndarray | None,
    weights: Sequence[float] | None = None,
    start: int = 0,
    on_step: StepHook | None = None,
    schedule: NoiseSchedule | None = None,
    progress: bool = True,
    desc: str = "DDIM",
) -> np.ndarray:
    """Run DDIM steps `start`.. of `settings.num_steps` on `latents` [B, h, w, c] (already at the
    noise level of timestep `start`); `contexts` are K text encodings [B, L, D] guided toward with
    `weights` (default: one encoding, weight 1); `uncond` is [1 or B, L, D]."""
    sampler = DDIMSampler(schedule or NoiseSchedule(), settings)
    conds = [_to_numpy(c) for c in contexts]
    weights = [1.0] * len(conds) if weights is None else [float(w) for w in weights]
    if len(weights) != len(conds) or not conds:
        raise ValueError(f"denoise: {len(conds)} contexts but {len(weights)} weights")
    latents = np.array(latents, dtype=np.float32)
    batch = latents.shape[0]
    for c in conds:
        if c.shape[0] != batch:
            raise ValueError(f"context batch {c.shape[0]} != latents batch {batch}")
    single = len(conds) == 1 and weights[0] == 1.0
    guided = not (single and settings.guidance_scale == 1.0)
    if guided:
        u = _to_numpy(uncond)
        if u.shape[0] != batch:
            u = np.broadcast_to(u, conds[0].shape)
        model_context = np.ascontiguousarray(np.concatenate([u, *conds], axis=0))
    else:
        model_context = conds[0]
    copies = len(model_context) // batch
    rng = np.random.default_rng(settings.seed)  # eta noise, drawn as DDIMSampler draws it
    timesteps = sampler.timesteps[start:]
    for i, t in enumerate(tqdm(timesteps, desc=desc, leave=False, disable=not progress)):
        model_in = np.concatenate([latents] * copies, axis=0) if copies > 1 else latents
        t_batch = np.full((len(model_in),), int(t), dtype=np.int32)
        eps = _to_numpy(denoise_fn(model_in, t_batch, model_context))
        if guided:
            parts = [eps[k * batch:(k + 1) * batch] for k in range(copies)]
            g = np.float32(settings.guidance_scale)
            if single:
                eps = parts[0] + g * (parts[1] - parts[0])
            else:
                eps = parts[0] + g * sum(np.float32(w) * (p - parts[0]) for w, p in zip(weights, parts[1:]))
        a_t, a_prev = sampler.alpha_pair(int(t))
        noise = rng.standard_normal(latents.shape, dtype=np.float32) if settings.eta > 0 else None
        latents, _ = ddim_step(latents, eps, a_t, a_prev, eta=settings.eta, noise=noise)
        if on_step is not None:
            latents = on_step(latents, start + i, a_prev, i == len(timesteps) - 1)
    return latents


def alpha_at(settings: SamplerSettings, index: int, schedule: NoiseSchedule | None = None) -> float:
    """alphas_cumprod at the timestep of DDIM step `index`."""
    schedule = schedule or NoiseSchedule()
    t = int(DDIMSampler(schedule, settings).timesteps[index])
    return float(np.asarray(schedule.alphas_cumprod, dtype=np.float64)[t])


def add_noise(x0: np.ndarray, noise: np.ndarray, alpha_cumprod: float) -> np.ndarray:
    """x_t = sqrt(a) * x0 + sqrt(1 - a) * noise (the forward process at alphas_cumprod a)."""
    a = float(alpha_cumprod)
    return (np.float32(np.sqrt(a)) * np.asarray(x0, np.float32)
            + np.float32(np.sqrt(1.0 - a)) * np.asarray(noise, np.float32)).astype(np.float32)
