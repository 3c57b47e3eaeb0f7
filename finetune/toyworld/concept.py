"""The bundled toy-world concept: one fixed combination of attributes, including a never-named one.

Only textual inversion can reach the checkered pattern: no caption of the toy world ever
names it, so the pretrained model has no word for it.
"""

from __future__ import annotations

from finetune.toyworld.attributes import is_nameable
from finetune.toyworld.captions import describe
from finetune.toyworld.render import Scene

NAME = "red-checkered-heart"
ATTRIBUTES = {
    "shape": "heart",
    "color": "red",
    "size": "large",
    "position": "center",
    "background": "white",
    "pattern": "checkered",  # never named in any caption
}
# What a text prompt can say about it (the "oracle" prompt of the quality benchmark):
# "a large red heart in the center on a white background".
ORACLE_PROMPT = describe({a: v for a, v in ATTRIBUTES.items() if is_nameable(a, v)})


def concept_scenes(count: int = 5, seed: int = 0) -> list[Scene]:
    """`count` renders of the concept, varying only in the small per-scene jitter, rotation and scale."""
    return [Scene(**ATTRIBUTES, seed=seed * 1000 + i) for i in range(count)]
