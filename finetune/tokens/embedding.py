"""The token embedding of the text encoder, split into a frozen table and learned rows.

Ids below `base_vocab_size` read the frozen table (the pretrained CLIP embeddings, never
written: it is not a trainable variable, so no optimizer, weight decay or gradient ever
touches it). Ids from `base_vocab_size` on read the small trainable `learned_vectors`
variable of shape [num_vectors, D]: the only thing textual inversion trains.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


class PlaceholderEmbedding(keras.layers.Layer):
    def __init__(self, base_vocab_size: int, dim: int, num_vectors: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.base_vocab_size, self.dim, self.num_vectors = base_vocab_size, dim, num_vectors

    def build(self, input_shape=None):
        self.table = self.add_weight(
            shape=(self.base_vocab_size, self.dim), initializer="random_normal", trainable=False, name="table"
        )
        self.learned_vectors = None
        if self.num_vectors:
            self.learned_vectors = self.add_weight(
                shape=(self.num_vectors, self.dim), initializer="zeros", trainable=True, name="learned_vectors",
                dtype="float32",  # float32 whatever dtype the frozen table is stored in
            )

    def call(self, ids):
        ids = ops.cast(ids, "int32")
        base = ops.take(self.table, ops.minimum(ids, self.base_vocab_size - 1), axis=0)
        if self.learned_vectors is None:
            return base
        new = ops.take(self.learned_vectors, ops.clip(ids - self.base_vocab_size, 0, self.num_vectors - 1), axis=0)
        new = ops.cast(new, base.dtype)
        return ops.where(ops.expand_dims(ids >= self.base_vocab_size, -1), new, base)

    def set_learned_vectors(self, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype="float32")
        if self.learned_vectors is None or vectors.shape != tuple(self.learned_vectors.shape):
            have = None if self.learned_vectors is None else tuple(self.learned_vectors.shape)
            raise ValueError(f"learned vectors of shape {vectors.shape} do not fit this embedding ({have})")
        self.learned_vectors.assign(vectors)

    def initial_vectors(self, initializer_ids: list[int], seed: int) -> np.ndarray:
        """Start values for the learned vectors.

        With initializer ids (the tokens of `token.initializer`, any count), vector i copies
        the table row of token i * len(ids) // num_vectors, so the initializer's tokens are
        spread over the vectors in order (one token each when the counts match). Without,
        random directions scaled to the table's mean row norm.
        """
        table = ops.convert_to_numpy(self.table)
        if initializer_ids:
            picks = [initializer_ids[i * len(initializer_ids) // self.num_vectors] for i in range(self.num_vectors)]
            return table[picks].astype("float32")
        rng = np.random.default_rng(seed)
        directions = rng.standard_normal((self.num_vectors, self.dim))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return (directions * np.linalg.norm(table, axis=1).mean()).astype("float32")
