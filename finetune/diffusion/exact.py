"""The exact denoiser of a finite set of latents: the epsilon prediction that minimizes the training
loss when the data are exactly those latents.

For data x0 drawn uniformly from a set {z_1 .. z_N} and x_t = sqrt(a) x0 + sqrt(1 - a) eps,

    E[x0 | x_t] = sum_i w_i z_i,   w = softmax_i( -|x_t - sqrt(a) z_i|^2 / (2 (1 - a)) )
    eps(x_t)    = (x_t - sqrt(a) E[x0 | x_t]) / sqrt(1 - a)

A text prompt that is true of a subset of the data conditions by restricting the set to that subset.
It is a reference, not a generator: a sampler that runs on it shows what a model that learned its
data perfectly would do (scripts/generate_quality.py asks it what img2img can keep, docs/generate.md).
"""

from __future__ import annotations

import numpy as np


def posterior_mean(x_t: np.ndarray, alpha_cumprod: float, data: np.ndarray) -> np.ndarray:
    """E[x0 | x_t] [*shape] of one noisy sample `x_t` [*shape] under `data` [N, *shape] at alphas_cumprod a."""
    if not len(data):
        raise ValueError("the exact denoiser needs at least one data point")
    a = float(alpha_cumprod)
    flat = np.asarray(data, np.float64).reshape(len(data), -1)
    d2 = ((np.asarray(x_t, np.float64).reshape(-1) - np.sqrt(a) * flat) ** 2).sum(axis=1)
    logits = -d2 / (2.0 * (1.0 - a))
    w = np.exp(logits - logits.max())
    return ((w / w.sum()) @ flat).reshape(np.shape(x_t))


def exact_eps(x_t: np.ndarray, alpha_cumprod: float, data: np.ndarray) -> np.ndarray:
    """The loss-optimal epsilon [*shape] for `x_t` [*shape] under `data` [N, *shape]."""
    a = float(alpha_cumprod)
    x0 = posterior_mean(x_t, a, data)
    return ((np.asarray(x_t, np.float64) - np.sqrt(a) * x0) / np.sqrt(1.0 - a)).astype(np.float32)
