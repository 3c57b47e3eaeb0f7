"""Quality metrics of a learned concept, after the textual-inversion paper (Gal et al. 2022, sec. 4).

- CLIP-I: mean pairwise cosine similarity between the judge's embeddings of the training
  images and of the generated images (does it look like the concept?).
- CLIP-T: mean cosine similarity between the embedding of the prompt with the placeholder
  removed and the generated images (does it follow the rest of the prompt?).
- attribute score (toy world only): fraction of generated images whose measured
  attributes all equal the concept's.

The functions take embeddings, so any judge (the tiny CLIP, a user's CLIP) fits.
"""

from __future__ import annotations

import re

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def clip_i(reference_embeddings: np.ndarray, generated_embeddings: np.ndarray) -> float:
    """Mean cosine similarity over all (reference, generated) pairs."""
    return float(np.mean(_unit(reference_embeddings) @ _unit(generated_embeddings).T))


def clip_t(text_embeddings: np.ndarray, generated_embeddings: np.ndarray) -> float:
    """Mean cosine similarity of each generated image with the text of its own prompt ([N, D] each)."""
    return float(np.mean(np.sum(_unit(text_embeddings) * _unit(generated_embeddings), axis=-1)))


def remove_placeholder(prompt: str, placeholder: str) -> str:
    """'a photo of <tok> on the beach' -> 'a photo of on the beach' (the paper's CLIP-T text)."""
    return re.sub(r"\s+", " ", prompt.replace(placeholder, " ")).strip()


def attribute_score(measured: list[dict], target: dict) -> float:
    """Fraction of `measured` attribute dicts that agree with every attribute in `target`."""
    if not measured:
        return 0.0
    return float(np.mean([all(m.get(k) == v for k, v in target.items()) for m in measured]))


def per_attribute_accuracy(measured: list[dict], target: dict) -> dict[str, float]:
    return {k: float(np.mean([m.get(k) == v for m in measured])) if measured else 0.0 for k, v in target.items()}
