"""Editability options (finetune/training/editability.py): vectors held at a norm, the L2 pull toward
the initializer, shared caption context, and the quality benchmark's edit prompts."""

import numpy as np
import pytest

from finetune.errors import ConfigError
from finetune.training.editability import FixedNorm, l2_penalty, project, target_norms
from finetune.validation import parse_norm
from tests.conftest import FAST, compose_train


def test_targets_of_each_norm_option(rng):
    table = rng.standard_normal((50, 8)).astype("float32")
    start = rng.standard_normal((3, 8)).astype("float32") * [[1.0], [2.0], [3.0]]
    assert target_norms(None, start, table) is None
    np.testing.assert_allclose(target_norms("vocabulary", start, table), [np.linalg.norm(table, axis=1).mean()] * 3,
                               rtol=1e-6)
    np.testing.assert_allclose(target_norms("initializer", start, table), np.linalg.norm(start, axis=1), rtol=1e-6)
    np.testing.assert_allclose(target_norms("0.5", start, table), [0.5] * 3)
    np.testing.assert_allclose(target_norms(2, start, table), [2.0] * 3)


@pytest.mark.parametrize("bad", ["vocab", "-1", "0", "nan", "inf", ""])
def test_bad_norm_names_the_key(bad):
    with pytest.raises(ConfigError, match="token.norm="):
        parse_norm(bad)


def test_projection_keeps_direction_and_sets_each_norm(rng):
    vectors = rng.standard_normal((2, 16)).astype("float32") * 7
    norms = np.array([0.4, 1.5], np.float32)
    out = project(vectors, norms)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), norms, rtol=1e-6)
    cosine = np.sum(out * vectors, axis=1) / np.linalg.norm(out, axis=1) / np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-6)
    assert FixedNorm(norms).get_config() == {"norms": pytest.approx([0.4, 1.5])}


def test_l2_penalty_value(rng):
    start = rng.standard_normal((2, 4)).astype("float32")
    moved = start + np.array([[1, 0, 0, 0], [0, 2, 0, 0]], np.float32)
    assert float(l2_penalty(moved, start, 0.5)) == pytest.approx(0.5 * (1 + 4) / 2)
    assert float(l2_penalty(moved, start, 0.0)) == 0.0


# One short run per option at a high rate (the free norm moves far more than 1e-4 in it), two vectors.
SHORT = (*FAST, "token.num_vectors=2", "token.initializer='red heart'", "trainer.max_steps=8",
         "trainer.learning_rate=0.05", "trainer.lr_schedule=constant", "token.norm=null")


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """SHORT with one tfds folder for the module's runs (prepared once)."""
    return (*SHORT, f"data.data_dir={tmp_path_factory.mktemp('tfds')}")


@pytest.fixture(scope="module")
def free_run(tmp_path_factory, short):
    from finetune.training.run import train

    return train(compose_train(*short), tmp_path_factory.mktemp("free"))


def test_training_keeps_every_vector_on_its_norm(tmp_path, short, free_run):
    """The acceptance line: with a norm constraint, every vector's norm is within 1e-4 of its target after
    training (the initializer's target: test_targets_of_each_norm_option)."""
    from finetune.export.diffusers_format import load_diffusers_embedding
    from finetune.training.run import train

    held = train(compose_train(*short, "token.norm=vocabulary"), tmp_path)
    targets = [held["vocabulary_mean_norm"]] * 2
    _, vectors, _ = load_diffusers_embedding(tmp_path / "learned_embeds.safetensors")
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float64), axis=1), targets, atol=1e-4)
    np.testing.assert_allclose(held["embedding_history"]["norm"], [targets] * len(held["embedding_history"]["norm"]),
                               atol=1e-4)  # at every logged step, the start included
    assert np.max(np.abs(np.array(free_run["learned_vector_norms"]) - free_run["initial_vector_norms"])) > 0.01


def test_l2_penalty_pulls_the_vectors_back(tmp_path, short, free_run):
    from finetune.training.run import train

    pulled = train(compose_train(*short, "trainer.l2_to_initializer=100"), tmp_path)
    distance = lambda m: 1 - np.mean(m["embedding_history"]["cosine_to_init"][-1])  # noqa: E731
    assert distance(pulled) < 0.5 * distance(free_run), (distance(pulled), distance(free_run))
    assert pulled["loss_history"]["loss"] != free_run["loss_history"]["loss"]


def test_context_goes_after_the_placeholder_of_every_template():
    from finetune.data.templates import with_context

    assert with_context(["a photo of a {}", "{} in a rendering"], "  on a  white background ") == [
        "a photo of a {} on a white background", "{} on a white background in a rendering"]
    assert with_context(["a {}"], None) == ["a {}"]
    with pytest.raises(ConfigError, match="data.context"):
        with_context(["a {}"], "on {a} table")


def test_context_edits_cover_every_other_context_value():
    from finetune.benchmarks.quality import context_edits
    from finetune.toyworld.concept import ATTRIBUTES

    edits = context_edits(ATTRIBUTES)  # a large red checkered heart in the center on white
    assert edits == {
        "{} on a gray background": ("background", "gray"), "{} on a blue background": ("background", "blue"),
        "{} on a green background": ("background", "green"), "{} on a yellow background": ("background", "yellow"),
        "a small {}": ("size", "small"), "{} on the left": ("position", "left"), "{} on the right": ("position", "right"),
    }
