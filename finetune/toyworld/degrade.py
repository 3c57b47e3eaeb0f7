"""Image degradations that stand in for a generative model's blur (for checker tests).

    gaussian_blur(image, 1.5)   # separable Gaussian, sigma in pixels, reflected edges
    down_up(image, 2)           # resize to 1/2 and back (a proxy for a VAE round trip)

Both take and return uint8 arrays [H, W, 3] (or [N, H, W, 3]).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur_axis(x: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    r = len(kernel) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > r else "edge")
    out = np.zeros_like(x)
    n = x.shape[axis]
    for i, w in enumerate(kernel):
        out += w * np.take(xp, np.arange(i, i + n), axis=axis)
    return out


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of uint8 images [..., H, W, 3]; sigma in pixels (0: unchanged copy)."""
    image = np.asarray(image)
    if sigma <= 0:
        return image.copy()
    kernel = gaussian_kernel(sigma)
    x = image.astype(np.float32)
    x = _blur_axis(_blur_axis(x, kernel, x.ndim - 3), kernel, x.ndim - 2)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def down_up(image: np.ndarray, factor: int = 2,
            resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """Resize uint8 images [..., H, W, 3] down by `factor` and back up (PIL, antialiased)."""
    image = np.asarray(image)
    if image.ndim == 4:
        return np.stack([down_up(im, factor, resample) for im in image])
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, w // factor), max(1, h // factor)), resample)
    return np.asarray(small.resize((w, h), resample))


def jitter_colors(image: np.ndarray, rng: np.random.Generator, gain: float = 0.08,
                  shift: float = 6.0) -> np.ndarray:
    """Random global brightness gain (1 +- gain) and per-channel offsets (+- shift)."""
    image = np.asarray(image)
    g = 1 + rng.uniform(-gain, gain)
    o = rng.uniform(-shift, shift, size=3).astype(np.float32)
    return np.clip(np.rint(image.astype(np.float32) * g + o), 0, 255).astype(np.uint8)


def add_noise(image: np.ndarray, rng: np.random.Generator, sigma: float = 4.0) -> np.ndarray:
    """Additive Gaussian pixel noise of `sigma` (uint8 units)."""
    image = np.asarray(image)
    noise = rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image.astype(np.float32) + noise), 0, 255).astype(np.uint8)


def warp(image: np.ndarray, rng: np.random.Generator, amplitude: float = 1.5, cells: int = 4) -> np.ndarray:
    """A smooth random displacement (up to ~`amplitude` pixels) of a uint8 image [H, W, 3]:
    a stand-in for the small shape distortions of generated images."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    field = rng.uniform(-amplitude, amplitude, size=(2, cells + 1, cells + 1)).astype(np.float32)
    dx, dy = (np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BICUBIC)) for f in field)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x = np.clip(xs + dx, 0, w - 1)
    y = np.clip(ys + dy, 0, h - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    im = image.astype(np.float32)
    out = (im[y0, x0] * (1 - fx) * (1 - fy) + im[y0, x1] * fx * (1 - fy)
           + im[y1, x0] * (1 - fx) * fy + im[y1, x1] * fx * fy)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def generated_proxy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rough imitation of a generated sample: small warp, blur (sigma 1), color
    jitter and pixel noise."""
    x = warp(image, rng, amplitude=1.5)
    x = gaussian_blur(x, 1.0)
    x = jitter_colors(x, rng)
    return add_noise(x, rng, sigma=4.0)
