#!/usr/bin/env python
"""Renders the bundled demo concept: an orange triangle with dark diagonal stripes on teal.

Each image gets a small random shift, size change and rotation drawn from a NumPy
generator seeded by --seed, so the output is the same on every run:

    python scripts/make_concept.py                      # -> data/concepts/orange-striped-triangle/
    python scripts/make_concept.py --out /tmp/c --count 8 --seed 3
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TEAL = (0, 128, 128)
ORANGE = (255, 140, 0)
DARK = (60, 30, 20)
SUPERSAMPLE = 4  # drawn this many times larger, then downscaled: smooth edges

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "concepts" / "orange-striped-triangle"


def render(size: int, rng: np.random.Generator) -> Image.Image:
    """One size x size RGB image of the striped triangle, randomly placed."""
    big = size * SUPERSAMPLE
    radius = big * rng.uniform(0.36, 0.42)  # circumradius: the triangle fills most of the frame
    angle = math.radians(rng.uniform(-15.0, 15.0))
    # An upright triangle's box spans [-r, r/2] vertically: centre the box, then shift.
    cx = big / 2 + big * rng.uniform(-0.06, 0.06)
    cy = big / 2 + radius / 4 + big * rng.uniform(-0.05, 0.05)
    vertices = [
        (cx + radius * math.cos(angle - math.pi / 2 + k * 2 * math.pi / 3),
         cy + radius * math.sin(angle - math.pi / 2 + k * 2 * math.pi / 3))
        for k in range(3)
    ]
    triangle = Image.new("L", (big, big), 0)
    ImageDraw.Draw(triangle).polygon(vertices, fill=255)

    # Dark stripes at 45 degrees in the triangle's own frame (they turn with it).
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float64)
    phi = angle + math.pi / 4
    u = (xs - cx) * math.cos(phi) + (ys - cy) * math.sin(phi)
    period = radius / 3
    stripes = (np.floor(u / period) % 2 == 0) & (np.asarray(triangle) > 0)

    image = np.empty((big, big, 3), np.uint8)
    image[:] = TEAL
    image[np.asarray(triangle) > 0] = ORANGE
    image[stripes] = DARK
    return Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--count", type=int, default=5, help="number of images (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 8:
        parser.error("--count must be >= 1 and --size >= 8")

    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for i in range(args.count):
        path = args.out / f"triangle-{i:02d}.png"
        render(args.size, rng).save(path, optimize=True)
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
