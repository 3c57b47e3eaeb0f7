"""A procedurally generated toy world of captioned 64x64 images (numpy + PIL only).

One shape per image, described by six attributes (`ATTRIBUTES`): shape, color, size,
position, background and the pattern of its fill. Some values are drawn but never
written in captions (`NEVER_NAMED`): only textual inversion can learn words for them.

    from finetune.toyworld import generate, measure, matches, describe
    images, captions, scenes = generate(1000, seed=0)   # uint8 [1000, 64, 64, 3]
    measured = measure(images[0])          # {"shape": "star", "color": "red", ...}
    matches(measured, scenes[0])           # {"shape": True, "color": True, ...}
    describe({"color": "red", "shape": "star"}, words={"pattern": "<tok>"})  # "a red <tok> star"
"""

from finetune.toyworld.attributes import (
    ATTRIBUTES,
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    NEVER_NAMED,
    PATTERNS,
    POSITIONS,
    SHAPES,
    SIZES,
    is_nameable,
    nameable_values,
    never_named_values,
)
from finetune.toyworld.captions import caption, describe, full_caption
from finetune.toyworld.checker import accuracy, matches, measure
from finetune.toyworld.dataset import generate, load, save
from finetune.toyworld.render import Scene, render, sample_scene

__all__ = [
    "ATTRIBUTES", "BACKGROUND_RGB", "BACKGROUNDS", "COLOR_RGB", "COLORS", "NEVER_NAMED", "PATTERNS",
    "POSITIONS", "SHAPES", "SIZES", "Scene", "accuracy", "caption", "describe", "full_caption", "generate",
    "is_nameable", "load", "matches", "measure", "nameable_values", "never_named_values", "render",
    "sample_scene", "save",
]
