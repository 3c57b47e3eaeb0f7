"""Inpainting and outpainting with the standard (4-channel) UNet.

At every DDIM step the known region's latents are replaced by the input's latents noised to the
level the step has reached (with the same noise throughout), through a feathered latent mask
(1 = repaint). After the last step the known region holds the input's clean latents. After
decoding, the known pixels are pasted back with a blended seam: outside the seam they are the
input's pixels exactly.

Masks are float arrays [H, W] in pixels, 1 where the model paints.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from finetune.errors import ConfigError, DataError
from finetune.sampling.ddim import SamplerSettings
from finetune.sampling.loop import add_noise
from finetune.sampling.img2img import img2img_latents

FILL_MODES = ("edge", "reflect", "white", "black", "gray", "noise")


def parse_box(box: str | Sequence, width: int, height: int, key: str = "generate.box") -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixels, x1/y1 exclusive, inside a width x height image."""
    try:
        values = [int(v) for v in (box.split(",") if isinstance(box, str) else box)]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4:
        raise ConfigError(f"{key}={box!r} must be four integers x0,y0,x1,y1 (pixels)")
    x0, y0, x1, y1 = values
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ConfigError(f"{key}={box!r} must satisfy 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} "
                          "(the input image's size)")
    return x0, y0, x1, y1


def box_mask(box: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), np.float32)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1.0
    return mask


def mask_from_image(mask_image: np.ndarray, image_shape: tuple[int, ...], what: str = "generate.mask") -> np.ndarray:
    """A mask picture (uint8 [H, W, 3], white = repaint) as a float mask; its size must be the image's."""
    if mask_image.shape[:2] != tuple(image_shape[:2]):
        raise DataError(f"{what}: the mask is {mask_image.shape[1]}x{mask_image.shape[0]} pixels but the image is "
                        f"{image_shape[1]}x{image_shape[0]}; give a mask of the image's size")
    return (np.asarray(mask_image, np.float32).mean(-1) >= 127.5).astype(np.float32)


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    return np.max([p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


def _erode(mask: np.ndarray) -> np.ndarray:
    return 1.0 - _dilate(1.0 - mask)


def feather(mask: np.ndarray, radius: int, outward: bool = True) -> np.ndarray:
    """A linear ramp over `radius` pixels at the mask's edge (Chebyshev distance). Outward: 1 on
    the mask, 0 further than `radius` from it. Inward: 0 off the mask, 1 deeper than `radius` into it."""
    mask = (np.asarray(mask, np.float32) > 0.5).astype(np.float32)
    if radius <= 0:
        return mask
    step = _dilate if outward else _erode
    total, current = mask.copy(), mask
    for _ in range(radius):
        current = step(current)
        total += current
    return (total / (radius + 1)).astype(np.float32)


def latent_mask(mask: np.ndarray, factor: int, radius: int = 1) -> np.ndarray:
    """The pixel mask on the latent grid [h, w, 1]: a latent is repainted if any of its pixels is,
    then feathered outward by `radius` latent pixels."""
    h, w = mask.shape
    if h % factor or w % factor:
        raise ConfigError(f"mask size {w}x{h} is not a multiple of the VAE factor {factor}")
    cells = mask.reshape(h // factor, factor, w // factor, factor).max(axis=(1, 3))
    return feather(cells, radius, outward=True)[..., None]


def inpaint_latents(
    denoise_fn,
    settings: SamplerSettings,
    init_latents: np.ndarray,
    noise: np.ndarray,
    mask_latent: np.ndarray,
    contexts: Sequence[np.ndarray],
    uncond: np.ndarray | None,
    strength: float = 1.0,
    weights: Sequence[float] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Latents where `mask_latent` [h, w, 1] (1 = repaint) is painted with the prompt and the rest
    follows `init_latents`; the masked region starts from `strength` as in img2img."""
    m = np.asarray(mask_latent, np.float32)
    known = np.asarray(init_latents, np.float32)

    def keep_known(latents, index, alpha, last):
        reference = known if last else add_noise(known, noise, alpha)
        return (m * latents + (1.0 - m) * reference).astype(np.float32)

    return img2img_latents(denoise_fn, settings, known, noise, contexts, uncond, strength, weights,
                           on_step=keep_known, progress=progress, desc="inpaint")


def paste_back(generated: np.ndarray, original: np.ndarray, blend: np.ndarray) -> np.ndarray:
    """uint8 images: `generated` where blend = 1, `original` (exactly) where blend = 0, mixed between."""
    b = np.asarray(blend, np.float32)[..., None]
    mixed = b * np.asarray(generated, np.float32) + (1.0 - b) * np.asarray(original, np.float32)
    out = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return np.where(b == 0.0, original, out).astype(np.uint8)


def pad_canvas(image: np.ndarray, left: int, right: int, top: int, bottom: int, fill: str = "edge",
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(canvas uint8 [H + top + bottom, W + left + right, 3], mask: 1 on the new area)."""
    for key, value in (("left", left), ("right", right), ("top", top), ("bottom", bottom)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"generate.outpaint.{key}={value!r} must be a non-negative integer (pixels)")
    if left + right + top + bottom == 0:
        raise ConfigError("generate.outpaint: left, right, top and bottom are all 0; give the pixels to add")
    if fill not in FILL_MODES:
        raise ConfigError(f"generate.outpaint.fill={fill!r} must be one of {', '.join(FILL_MODES)}")
    pad = ((top, bottom), (left, right), (0, 0))
    if fill in ("edge", "reflect"):
        if fill == "reflect" and max(top, bottom) >= image.shape[0] or fill == "reflect" and max(left, right) >= image.shape[1]:
            raise ConfigError("generate.outpaint.fill=reflect needs padding smaller than the image; use edge")
        canvas = np.pad(image, pad, mode=fill)
    else:
        value = {"white": 255, "black": 0, "gray": 128, "noise": 0}[fill]
        canvas = np.pad(image, pad, mode="constant", constant_values=value)
    mask = np.ones(canvas.shape[:2], np.float32)
    mask[top:top + image.shape[0], left:left + image.shape[1]] = 0.0
    if fill == "noise":
        rng = np.random.default_rng(seed)
        random = rng.integers(0, 256, canvas.shape, dtype=np.uint8)
        canvas = np.where(mask[..., None] > 0, random, canvas)
    return canvas.astype(np.uint8), mask


def resize_mask(mask: np.ndarray, resolution: int) -> np.ndarray:
    """A mask cropped and resized as its image is (`fit_image`), thresholded back to 0/1."""
    from finetune.sampling.img2img import fit_image

    gray = np.rint(np.asarray(mask, np.float32) * 255).astype(np.uint8)[..., None].repeat(3, -1)
    return (fit_image(gray, resolution, Image.Resampling.BILINEAR)[..., 0] >= 128).astype(np.float32)
