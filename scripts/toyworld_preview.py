#!/usr/bin/env python
"""Writes a labelled grid PNG of random toy-world renders: each cell shows the image
(enlarged), its caption, and the attributes the checker measures (a measured value
that disagrees with the scene is marked "!= true value").

    python scripts/toyworld_preview.py /tmp/toyworld.png
    python scripts/toyworld_preview.py out.png --count 24 --seed 3 --blur 1.5
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from finetune.toyworld import ATTRIBUTES, generate, matches, measure
from finetune.toyworld.degrade import gaussian_blur

SCALE = 3  # image enlargement (nearest neighbour)
COLUMNS = 6
TEXT_LINES = 9
LINE_HEIGHT = 13
WRAP = 30  # characters per caption line


def _font():
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid(images: np.ndarray, captions: list[str], scenes: list, blur: float = 0.0) -> Image.Image:
    size = images.shape[1] * SCALE
    cell_w, cell_h = max(size, 200), size + TEXT_LINES * LINE_HEIGHT + 8
    rows = -(-len(images) // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for i, (image, text, scene) in enumerate(zip(images, captions, scenes)):
        if blur > 0:
            image = gaussian_blur(image, blur)
        x, y = (i % COLUMNS) * cell_w, (i // COLUMNS) * cell_h
        big = Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST)
        sheet.paste(big, (x + (cell_w - size) // 2, y + 2))
        measured = measure(image)
        ok = matches(measured, scene)
        lines = textwrap.wrap(f'"{text}"', WRAP)[:3]
        lines += [f"{a}: {measured[a]}" + ("" if ok[a] else f" != {getattr(scene, a)}") for a in ATTRIBUTES]
        for j, line in enumerate(lines):
            color = (200, 0, 0) if "!=" in line else (0, 0, 0)
            draw.text((x + 4, y + size + 4 + j * LINE_HEIGHT), line, fill=color, font=font)
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="PNG file to write")
    parser.add_argument("--count", type=int, default=24, help="number of renders (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--blur", type=float, default=0.0,
                        help="Gaussian blur sigma (pixels) applied before display and measuring (default: none)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be >= 1")
    images, captions, scenes = generate(args.count, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid(images, captions, scenes, args.blur).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
