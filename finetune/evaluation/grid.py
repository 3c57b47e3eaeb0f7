"""Labelled image grids for evaluation samples, and an atomic PNG writer."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from finetune.io import atomic_write

MIN_CELL_SIZE = 256  # smaller images are upscaled (integer factor, NEAREST) to at least this
LABEL_PADDING = 4  # pixels around the label text inside the white band
LABEL_FONT_SIZE = 14
TITLE_FONT_SIZE = 18
CELL_GAP = 4  # white pixels between neighbouring cells (none at the outer edges)
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)


def _load_font(size: int = LABEL_FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable built-in font
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _text_width(font, text: str) -> float:
    return font.getlength(text) if hasattr(font, "getlength") else font.getbbox(text)[2]


def _line_height(font) -> int:
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (getattr(font, "size", LABEL_FONT_SIZE), 0)
    return ascent + descent + 2


def _wrap(text: str, font, max_width: int) -> list[str]:
    """Greedy word wrap to `max_width` pixels; words longer than a line are split."""
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = word if not line else f"{line} {word}"
            if _text_width(font, candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            # Break an overlong word character by character.
            for ch in word:
                if line and _text_width(font, line + ch) > max_width:
                    lines.append(line)
                    line = ""
                line += ch
        lines.append(line)
    return lines


def _as_rgb_uint8(image: np.ndarray, index: int) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"make_grid: image {index} has dtype {arr.dtype}; convert with to_uint8 first")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"make_grid: image {index} must be HxWx3, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr[..., :3]


def _fit(img: Image.Image, box: int) -> Image.Image:
    """Scale to fit a box x box square, keeping the aspect ratio."""
    w, h = img.size
    if (w, h) == (box, box):
        return img
    scale = box / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return img.resize(new, resample)


def make_grid(
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    ncols: int | None = None,
    cell_size: int | None = None,
) -> Image.Image:
    """A grid of square cells, each an image with its (wrapped) label on a white band under it.

    ncols defaults to ceil(sqrt(n)). cell_size is the side of each cell's image square;
    by default the largest image side, multiplied by the smallest integer that makes it
    at least MIN_CELL_SIZE (so 64x64 becomes 256x256 with NEAREST, keeping pixels sharp).
    Grid size: (ncols * cell_size + (ncols - 1) * CELL_GAP) x
    (nrows * (cell_size + band_height) + (nrows - 1) * CELL_GAP), where the band height is
    the same for all rows (enough for the longest wrapped label).
    """
    if len(images) == 0:
        raise ValueError("make_grid: no images")
    if len(images) != len(labels):
        raise ValueError(f"make_grid: {len(images)} images but {len(labels)} labels")
    arrays = [_as_rgb_uint8(im, i) for i, im in enumerate(images)]
    n = len(arrays)
    if ncols is None:
        ncols = math.ceil(math.sqrt(n))
    if ncols < 1:
        raise ValueError(f"make_grid: ncols must be >= 1, got {ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)

    if cell_size is None:
        largest = max(max(a.shape[0], a.shape[1]) for a in arrays)
        cell_size = largest * max(1, math.ceil(MIN_CELL_SIZE / largest))
    if cell_size < 1:
        raise ValueError(f"make_grid: cell_size must be >= 1, got {cell_size}")

    font = _load_font()
    text_width = max(1, cell_size - 2 * LABEL_PADDING)
    wrapped = [_wrap(label, font, text_width) for label in labels]
    line_height = _line_height(font)
    max_lines = max(len(lines) for lines in wrapped)
    band = max_lines * line_height + 2 * LABEL_PADDING
    cell_h = cell_size + band

    width = ncols * cell_size + (ncols - 1) * CELL_GAP
    height = nrows * cell_h + (nrows - 1) * CELL_GAP
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for i, (arr, lines) in enumerate(zip(arrays, wrapped)):
        row, col = divmod(i, ncols)
        x0, y0 = col * (cell_size + CELL_GAP), row * (cell_h + CELL_GAP)
        tile = _fit(Image.fromarray(arr, "RGB"), cell_size)
        grid.paste(tile, (x0 + (cell_size - tile.width) // 2, y0 + (cell_size - tile.height) // 2))
        y = y0 + cell_size + LABEL_PADDING
        for line in lines:
            draw.text((x0 + LABEL_PADDING, y), line, fill=TEXT_COLOR, font=font)
            y += line_height
    return grid


def save_png_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write `image` as PNG to `path` atomically (see finetune.io.atomic_write)."""
    with atomic_write(path, "image") as f:
        image.save(f, format="PNG")
    return Path(path)


def with_title(image: Image.Image, title: str) -> Image.Image:
    """`image` under a white band holding `title` (wrapped to the image's width)."""
    font = _load_font(TITLE_FONT_SIZE)
    lines = _wrap(title, font, max(1, image.width - 2 * LABEL_PADDING))
    line_height = _line_height(font)
    band = len(lines) * line_height + 2 * LABEL_PADDING
    titled = Image.new("RGB", (image.width, image.height + band), BACKGROUND)
    draw = ImageDraw.Draw(titled)
    for i, line in enumerate(lines):
        draw.text((LABEL_PADDING, LABEL_PADDING + i * line_height), line, fill=TEXT_COLOR, font=font)
    titled.paste(image.convert("RGB"), (0, band))
    return titled
