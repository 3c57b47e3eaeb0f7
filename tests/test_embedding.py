"""PlaceholderEmbedding: frozen table + learned rows, and how the rows start."""

import numpy as np
import pytest
from keras import ops

from finetune.tokens.embedding import PlaceholderEmbedding


@pytest.fixture
def layer():
    emb = PlaceholderEmbedding(base_vocab_size=10, dim=4, num_vectors=3)
    emb.build()
    emb.table.assign(np.arange(40, dtype="float32").reshape(10, 4))
    emb.set_learned_vectors(-np.arange(12, dtype="float32").reshape(3, 4) - 1)
    return emb


def test_lookup_reads_table_below_base_vocab_and_vectors_above(layer):
    out = ops.convert_to_numpy(layer(np.array([[0, 9, 10, 12, 11]])))
    np.testing.assert_array_equal(out[0, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(out[0, 1], [36, 37, 38, 39])
    np.testing.assert_array_equal(out[0, 2], [-1, -2, -3, -4])
    np.testing.assert_array_equal(out[0, 3], [-9, -10, -11, -12])
    np.testing.assert_array_equal(out[0, 4], [-5, -6, -7, -8])


def test_only_the_vectors_are_trainable(layer):
    assert [v.name for v in layer.trainable_variables] == ["learned_vectors"]
    assert [v.name for v in layer.non_trainable_variables] == ["table"]


def test_initializer_tokens_are_spread_over_the_vectors(layer):
    table = ops.convert_to_numpy(layer.table)
    np.testing.assert_array_equal(layer.initial_vectors([7], seed=0), table[[7, 7, 7]])  # one token, three vectors
    np.testing.assert_array_equal(layer.initial_vectors([1, 2, 3], seed=0), table[[1, 2, 3]])
    np.testing.assert_array_equal(layer.initial_vectors([1, 2, 3, 4, 5, 6], seed=0), table[[1, 3, 5]])


def test_random_init_has_the_tables_mean_norm(layer):
    vectors = layer.initial_vectors([], seed=3)
    mean_norm = np.linalg.norm(ops.convert_to_numpy(layer.table), axis=1).mean()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), mean_norm, rtol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    np.testing.assert_array_equal(vectors, layer.initial_vectors([], seed=3))


def test_wrong_shape_is_refused(layer):
    with pytest.raises(ValueError, match="do not fit"):
        layer.set_learned_vectors(np.zeros((2, 4)))
