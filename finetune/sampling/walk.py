"""Latent walks: frames between two prompts. Text encodings are interpolated linearly, the initial
noise spherically (so every frame's noise keeps the norm a standard normal sample has)."""

from __future__ import annotations

import numpy as np


def slerp(a: np.ndarray, b: np.ndarray, t: float, dot_threshold: float = 0.9995) -> np.ndarray:
    """Spherical interpolation between two arrays (as flat vectors); linear where they are nearly parallel."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    dot = float(np.sum(a * b) / (na * nb)) if na > 0 and nb > 0 else 1.0
    if abs(dot) > dot_threshold:
        return ((1 - t) * a + t * b).astype(np.float32)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    s = np.sin(theta)
    return (np.sin((1 - t) * theta) / s * a + np.sin(t * theta) / s * b).astype(np.float32)


def walk_fractions(frames: int) -> np.ndarray:
    """0 .. 1 in `frames` evenly spaced steps (both ends included)."""
    return np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)


def walk_inputs(context_a: np.ndarray, context_b: np.ndarray, noise_a: np.ndarray, noise_b: np.ndarray,
                frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(contexts [frames, L, D], noises [frames, h, w, c]) from (a, noise a) to (b, noise b)."""
    ts = walk_fractions(frames)
    ca, cb = np.asarray(context_a, np.float32), np.asarray(context_b, np.float32)
    contexts = np.stack([((1 - t) * ca + t * cb).astype(np.float32) for t in ts])
    noises = np.stack([slerp(noise_a, noise_b, float(t)) for t in ts])
    return contexts, noises
