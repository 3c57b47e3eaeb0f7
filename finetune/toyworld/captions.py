"""Captions of toy-world scenes.

    caption(scene, rng)        # "a striped shape on a blue background", "a small red star", ...
    full_caption(scene)        # every nameable attribute: "a small red striped star on the left on a blue background"
    describe({"color": "red", "shape": "star"})                      # "a red star"
    describe({"shape": "star", "pattern": "checkered"}, words={"pattern": "<checks>"})  # "a <checks> star"

`caption` names a random subset of the scene's attributes in one of a few simple
templates. A value listed in NEVER_NAMED is never written: a caption of a crescent says
"shape", one of a checkered fill leaves the pattern out. `describe` is the canonical
phrase (used by `full_caption`); its `words` argument puts other text, e.g. a textual
inversion placeholder, in an attribute's place, which is the only way to ask for a
never-named value.

Every word comes from a small fixed set (CAPTION_WORDS plus the nameable values), all
of them single CLIP tokens.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from finetune.toyworld.attributes import ATTRIBUTES, is_nameable

# How often caption() names each attribute (when its value is nameable).
MENTION_PROBABILITY: Mapping[str, float] = {
    "shape": 0.7, "color": 0.7, "size": 0.5, "position": 0.4, "background": 0.5, "pattern": 0.5,
}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "center": "in the center"}
PREFIXES = ("", "", "", "", "a picture of ", "an image of ", "a drawing of ")
BACKGROUND_PHRASES = ("on a {} background", "on a {} background", "against a {} background",
                      "with a {} background")
NOUN = "shape"  # the noun when the shape is not named
# The words templates add around the attribute values.
CAPTION_WORDS = frozenset(
    "a an of picture image drawing on in the left right center against with background shape".split())

_ADJECTIVES = ("size", "color", "pattern")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _check_values(values: Mapping[str, str], words: Mapping[str, str]) -> None:
    for name, value in values.items():
        if name not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {name!r}; expected one of {tuple(ATTRIBUTES)}")
        if name not in words and not is_nameable(name, value):
            raise ValueError(f"{name} {value!r} is never named in captions; pass words={{{name!r}: ...}}")
    for name in words:
        if name not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {name!r} in words")


def describe(values: Mapping[str, str], words: Mapping[str, str] | None = None, *,
             adjective_order: tuple[str, ...] = _ADJECTIVES, background_phrase: str = "on a {} background",
             prefix: str = "") -> str:
    """The phrase naming exactly the attributes in `values` (attribute -> value), e.g.
    {"size": "small", "color": "red", "shape": "star"} -> "a small red star".
    `words` maps attributes to the text written instead of their value (e.g. a
    placeholder token), and is required for NEVER_NAMED values."""
    words = dict(words or {})
    _check_values(values, words)
    text = {name: words.get(name, value) for name, value in values.items()}
    for name in words:
        text.setdefault(name, words[name])
    noun = text.get("shape", NOUN)
    phrase = " ".join([text[a] for a in adjective_order if a in text] + [noun])
    phrase = f"{_article(phrase)} {phrase}"
    if "position" in text:
        phrase += " " + POSITION_PHRASES.get(text["position"], text["position"])
    if "background" in text:
        phrase += " " + background_phrase.format(text["background"])
    return prefix + phrase


def nameable_attributes(scene) -> dict[str, str]:
    """The scene's attribute values that captions may name."""
    return {a: v for a, v in scene.attributes.items() if is_nameable(a, v)}


def full_caption(scene) -> str:
    """The "oracle" caption: every nameable attribute, canonical template."""
    return describe(nameable_attributes(scene))


def caption(scene, rng: np.random.Generator) -> str:
    """A caption naming a random subset of the scene's nameable attributes
    (each with MENTION_PROBABILITY), in a randomly chosen simple template."""
    values = {a: v for a, v in nameable_attributes(scene).items() if rng.random() < MENTION_PROBABILITY[a]}
    order = _ADJECTIVES if rng.random() < 0.75 else ("size", "pattern", "color")
    prefix = PREFIXES[rng.integers(len(PREFIXES))]
    if "background" in values and rng.random() < 0.25:  # "a blue background with a red star"
        background = values.pop("background")
        return f"{prefix}{_article(background)} {background} background with {describe(values, adjective_order=order)}"
    template = BACKGROUND_PHRASES[rng.integers(len(BACKGROUND_PHRASES))]
    return describe(values, adjective_order=order, prefix=prefix, background_phrase=template)
