"""Keeping a learned token editable: the vectors' norm held fixed, or pulled toward the initializer.

A learned vector that grows far beyond the vocabulary's norms takes over its prompt: "<cat> on
the beach" gives the cat and no beach. Directional Textual Inversion (DTI) reports
learned norms above 20 against about 0.4 for real tokens and learns only the direction, at an
in-distribution norm; the textual-inversion paper (Gal et al., 2022) tried an L2 penalty toward
the initializer's embedding. Both are here, as plain functions of arrays:

- `token.norm` (`target_norms` + `FixedNorm`): each vector lives on a sphere. After every
  optimizer update the vector is rescaled to its target norm (projected gradient descent: the
  radial part of the update is dropped, AdamW and the vectors stay float32). Targets: the mean
  norm of the vocabulary's rows, each vector's start norm, or a number.
- `trainer.l2_to_initializer` (`l2_penalty`): weight x the mean over vectors of
  ||v - v_start||^2, added to the noise loss (the logged loss stays the noise MSE).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from finetune.validation import parse_norm


def target_norms(norm, initial_vectors: np.ndarray, table: np.ndarray) -> np.ndarray | None:
    """The norm each learned vector is held at [num_vectors] (float32), or None for a free norm.

    "vocabulary": the mean L2 norm of the table's rows (every vector the same); "initializer":
    each vector's start norm; a number: that norm."""
    norm = parse_norm(norm)
    if norm is None:
        return None
    count = len(initial_vectors)
    if norm == "vocabulary":
        value = np.linalg.norm(np.asarray(table, np.float64), axis=1).mean()
        return np.full(count, value, np.float32)
    if norm == "initializer":
        return np.linalg.norm(np.asarray(initial_vectors, np.float64), axis=1).astype(np.float32)
    return np.full(count, norm, np.float32)


def project(vectors: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """`vectors` [N, D] rescaled to `norms` [N] (numpy; the same arithmetic as FixedNorm)."""
    return keras.ops.convert_to_numpy(FixedNorm(norms)(ops.convert_to_tensor(np.asarray(vectors, np.float32))))


class FixedNorm(keras.constraints.Constraint):
    """Keras variable constraint: each row of a [N, D] variable rescaled to its norm in `norms` [N].

    Keras' optimizers apply a variable's constraint after every update, on every backend."""

    def __init__(self, norms):
        self.norms = [float(n) for n in np.asarray(norms).reshape(-1)]

    def __call__(self, w):
        w = ops.cast(w, "float32")
        length = ops.sqrt(ops.sum(ops.square(w), axis=-1, keepdims=True))
        target = ops.reshape(ops.convert_to_tensor(np.asarray(self.norms, np.float32)), (-1, 1))
        return w * (target / ops.maximum(length, 1e-12))

    def get_config(self):
        return {"norms": self.norms}


def l2_penalty(vectors, initial_vectors, weight: float):
    """weight x mean over vectors of ||v - v_start||^2 (a keras.ops scalar). The trainer adds it only for
    a nonzero weight (StableDiffusionFineTuner.objective)."""
    delta = ops.cast(vectors, "float32") - ops.convert_to_tensor(np.asarray(initial_vectors, np.float32))
    return float(weight) * ops.mean(ops.sum(ops.square(delta), axis=-1))
