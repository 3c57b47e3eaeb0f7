"""Score rendered images of a concept: CLIP-I, CLIP-T and, for toy-world concepts, the attribute score.

A concept folder may hold a `concept.json` whose `toyworld_attributes` are the attribute
values of its images (scripts/make_concept.py writes one for the bundled concept); then
every generated image is also measured by the toy world's checker.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from finetune.evaluation.metrics import attribute_score, clip_i, clip_t, per_attribute_accuracy, remove_placeholder
from finetune.safefiles import read_json

CONCEPT_FILE = "concept.json"


def read_concept(concept_dir: str | Path | None) -> dict | None:
    """`concept_dir/concept.json` as a dict, or None when there is no such file."""
    if concept_dir is None:
        return None
    path = Path(concept_dir) / CONCEPT_FILE
    if not path.is_file():
        return None
    return read_json(path, "concept file")  # bounded and type-checked: DataError naming the file


def concept_attributes(concept_dir: str | Path | None) -> dict | None:
    """The toy-world attributes in `concept_dir/concept.json`, or None (no file, or not a toy-world concept)."""
    return (read_concept(concept_dir) or {}).get("toyworld_attributes")


def requested_attributes(text: str) -> dict[str, str]:
    """The toy-world attribute values a prompt names: "on a green background" -> {"background": "green"},
    "a small red shape" -> {"size": "small", "color": "red"}; {} for "a photo of". A color word right
    before "background" names the background."""
    from finetune.toyworld.attributes import ATTRIBUTES, nameable_values

    words = re.findall(r"[a-z]+", text.lower())
    out = {}
    for i, word in enumerate(words):
        before_background = i + 1 < len(words) and words[i + 1] == "background"
        for attribute in ATTRIBUTES:
            if (attribute == "background") == before_background and word in nameable_values(attribute):
                out[attribute] = word
    return out


def measure_images(images: np.ndarray) -> list[dict]:
    """The toy-world checker's reading of each uint8 image (all None where the checker gives up)."""
    from finetune.toyworld import measure

    out = []
    for image in images:
        try:
            out.append(measure(image))
        except (ValueError, IndexError, ZeroDivisionError, FloatingPointError):
            out.append({})
    return out


def score_images(
    images: np.ndarray, prompts: list[str], placeholder: str, *, judge=None, reference: np.ndarray | None = None,
    target: dict | None = None, clip_t_texts: list[str] | None = None,
) -> dict:
    """Scores of generated `images` (uint8 [N, H, W, 3]), `prompts[i]` being image i's prompt.

    CLIP-I against `reference` images and CLIP-T against each prompt with the placeholder
    removed (or `clip_t_texts`), when a judge is given; the attribute score and the
    per-attribute accuracy when toy-world `target` attributes are given.
    """
    out: dict = {"n": int(len(images))}
    if judge is not None:
        generated = judge.embed_images(images)
        if reference is not None and len(reference):
            out["clip_i"] = clip_i(judge.embed_images(reference), generated)
        texts = clip_t_texts or [remove_placeholder(p, placeholder) for p in prompts]
        out["clip_t"] = clip_t(judge.embed_texts(texts), generated)
    if target:
        measured = measure_images(images)
        out["attribute_score"] = attribute_score(measured, target)
        out["attributes"] = per_attribute_accuracy(measured, target)
    return out


def score_by_prompt(images: np.ndarray, prompts: list[str], placeholder: str, **kwargs) -> dict:
    """`score_images` over all images ("all") and per distinct prompt."""
    out = {"all": score_images(images, prompts, placeholder, **kwargs)}
    for prompt in dict.fromkeys(prompts):
        idx = [i for i, p in enumerate(prompts) if p == prompt]
        out[prompt] = score_images(images[idx], [prompts[i] for i in idx], placeholder, **kwargs)
    return out
