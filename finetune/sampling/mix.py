"""Prompt mixing: several prompts with weights.

    blend (default)   one text encoding, sum_k w_k * c_k / sum_k w_k, then ordinary guidance
    guidance          guidance toward each prompt with its weight (finetune.sampling.loop):
                      eps = eps_uncond + g * sum_k (w_k / sum w) * (eps_k - eps_uncond)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from finetune.errors import ConfigError


def normalized_weights(weights: Sequence[float], count: int, key: str = "generate.weights") -> list[float]:
    """Weights for `count` prompts, >= 0 with a positive sum, scaled to sum to 1."""
    values = [float(w) for w in weights]
    if len(values) != count:
        raise ConfigError(f"{key} has {len(values)} values for {count} prompts; give one weight per prompt")
    if any(not np.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise ConfigError(f"{key}={list(weights)} must be finite numbers >= 0 with a positive sum")
    total = sum(values)
    return [w / total for w in values]


def blend_encodings(encodings: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_k w_k * encodings[k] / sum_k w_k (each [B, L, D])."""
    w = normalized_weights(weights, len(encodings))
    out = np.zeros_like(np.asarray(encodings[0], np.float32))
    for wk, e in zip(w, encodings):
        out += np.float32(wk) * np.asarray(e, np.float32)
    return out
