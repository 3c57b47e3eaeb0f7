"""The toy world's attribute vocabulary, as data.

A toy-world image shows one shape on a plain background. Every image is described by
six attributes (see `ATTRIBUTES`):

    shape       circle, square, triangle, star, heart, cross, crescent
    color       red, orange, yellow, green, blue, purple, pink   (the shape's fill)
    size        small, large
    position    left, center, right                              (horizontal placement)
    background  white, gray, blue, green, yellow
    pattern     plain, striped, dotted, checkered                (drawn inside the shape)

`NEVER_NAMED` lists values that are drawn in images but never written in any caption
("crescent", "checkered"): a caption of such an image simply leaves that attribute
out, so the text encoder never learns a word for them and only a learned (textual
inversion) embedding can ask for them.

Every caption word is a plain English word that OpenAI CLIP's tokenizer encodes as a
single token (checked by tests/test_toyworld.py). The never-named values need not be.

Colors are sRGB triples. A shape color always differs from the background color. The
backgrounds share the RGB of the same-named shape colors, so "blue" means one blue.
Patterns are drawn in a darker shade of the shape's own color (`SHADE` times its RGB),
which keeps the shape's hue unambiguous when stripes, dots or checks blur together.
No background is black or near-black, so a dark pattern shade never melts into it.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "crescent")

# Shape fills: saturated hues, far apart in both RGB and chromaticity.
COLOR_RGB: Mapping[str, tuple[int, int, int]] = MappingProxyType({
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 190),
    "pink": (245, 130, 190),
})
COLORS: tuple[str, ...] = tuple(COLOR_RGB)

BACKGROUND_RGB: Mapping[str, tuple[int, int, int]] = MappingProxyType({
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "blue": COLOR_RGB["blue"],
    "green": COLOR_RGB["green"],
    "yellow": COLOR_RGB["yellow"],
})
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_RGB)

SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "center", "right")
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")

# Attribute name -> its values, in a fixed order (the order of Scene's fields).
ATTRIBUTES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "position": POSITIONS,
    "background": BACKGROUNDS,
    "pattern": PATTERNS,
})

# Values that appear in images but never in a caption: only textual inversion reaches them.
NEVER_NAMED: Mapping[str, frozenset[str]] = MappingProxyType({
    "shape": frozenset({"crescent"}),
    "pattern": frozenset({"checkered"}),
})

# Words a caption must never contain (the never-named values and their near synonyms).
FORBIDDEN_WORDS: frozenset[str] = frozenset({
    "crescent", "moon", "checkered", "checked", "checker", "checkerboard", "chequered", "check", "checks",
})

# A pattern's darker shade: shade RGB = SHADE * shape RGB (same hue, lower brightness).
SHADE = 0.42


def is_nameable(attribute: str, value: str) -> bool:
    """Whether captions may name `value` of `attribute` (False for the NEVER_NAMED ones)."""
    if value not in ATTRIBUTES[attribute]:
        raise ValueError(f"unknown {attribute} {value!r}; expected one of {ATTRIBUTES[attribute]}")
    return value not in NEVER_NAMED.get(attribute, frozenset())


def nameable_values(attribute: str) -> tuple[str, ...]:
    """The values of `attribute` that captions may name."""
    return tuple(v for v in ATTRIBUTES[attribute] if is_nameable(attribute, v))


def never_named_values() -> list[tuple[str, str]]:
    """(attribute, value) pairs that are never named, in ATTRIBUTES order."""
    return [(a, v) for a, values in ATTRIBUTES.items() for v in values if not is_nameable(a, v)]


def caption_vocabulary() -> frozenset[str]:
    """Every attribute word a caption can contain (nameable values of all attributes)."""
    return frozenset(v for a in ATTRIBUTES for v in nameable_values(a))
