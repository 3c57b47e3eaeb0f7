"""progress.png: the preview prompt and seed across training steps, from samples/previews/step-N.png,
so a user sees the concept appear."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.evaluation.grid import make_grid, with_title

MAX_CELLS = 24  # more previews: evenly spaced ones, always with the first and the last
COLUMNS = 8
CELL_SIZE = 256
_STEP = re.compile(r"step-(\d+)\.png$")


def preview_files(previews_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every preview, by step."""
    found = [(int(m.group(1)), p) for p in Path(previews_dir).glob("step-*.png") if (m := _STEP.search(p.name))]
    return sorted(found)


def preview_image(path: Path) -> np.ndarray:
    """The picture of a preview file without its label: previews are one-cell grids
    (finetune.evaluation.grid.make_grid), the square image on top of the label band."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        side = image.width
        return np.asarray(image.crop((0, 0, side, side)) if image.height > side else image)


def evenly_spaced(items: list, most: int) -> list:
    if len(items) <= most:
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, most).round().astype(int))]


def progress_strip(previews_dir: str | Path, title: str) -> Image.Image | None:
    """A titled strip of the previews, labelled by step; None when there are none."""
    previews = evenly_spaced(preview_files(previews_dir), MAX_CELLS)
    if not previews:
        return None
    grid = make_grid([preview_image(p) for _, p in previews], [f"step {s}" for s, _ in previews],
                     ncols=min(len(previews), COLUMNS), cell_size=CELL_SIZE)
    return with_title(grid, title)
