"""Captioned toy-world datasets, deterministic from a seed.

    images, captions, scenes = generate(1000, seed=0)   # uint8 [1000, 64, 64, 3], list[str], list[Scene]
    save("toy.npz", images, captions, scenes); images, captions, scenes = load("toy.npz")

`generate(n, seed)` draws scene i and then its caption from one NumPy generator seeded
with `seed`, so the first k items do not depend on n, and the same seed always gives
the same images and captions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from finetune.toyworld.captions import caption, full_caption
from finetune.toyworld.render import BASE_SIZE, Scene, render, sample_scene


def generate(n: int, seed: int, size: int = BASE_SIZE, oracle: bool = False
             ) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`n` random scenes, their renders (uint8 [n, size, size, 3]) and captions
    (random attribute subsets; with `oracle`, the full caption of every scene)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    captions, scenes = [], []
    for i in range(n):
        scene = sample_scene(rng)
        text = caption(scene, rng)
        images[i] = render(scene, size)
        captions.append(full_caption(scene) if oracle else text)
        scenes.append(scene)
    return images, captions, scenes


def save(path: str | os.PathLike, images: np.ndarray, captions: list[str], scenes: list[Scene]) -> Path:
    """Writes one .npz: images, captions and the scenes (as JSON)."""
    if not len(images) == len(captions) == len(scenes):
        raise ValueError(f"{len(images)} images, {len(captions)} captions, {len(scenes)} scenes")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=np.asarray(images, np.uint8), captions=np.array(captions, dtype=str),
                        scenes=np.array(json.dumps([s.to_dict() for s in scenes])))
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load(path: str | os.PathLike) -> tuple[np.ndarray, list[str], list[Scene]]:
    """Reads a file written by `save`."""
    with np.load(path) as data:
        images = data["images"]
        captions = [str(c) for c in data["captions"]]
        scenes = [Scene.from_dict(d) for d in json.loads(str(data["scenes"]))]
    return images, captions, scenes
