"""What a run watches: DVAR's criterion as a plain function, the fixed validation batch, the best vectors,
the in-training scores. (The validation loss of whole runs, twice and across kill + resume:
tests/test_training.py and tests/test_backend_jax.py.)"""

import numpy as np
import pytest

from finetune.data.columns import CAPTION, VARIANT
from finetune.errors import ConfigError
from finetune.evaluation.scores import requested_attributes
from finetune.training.validation import (
    BestEmbedding, dvar_ratio, should_stop, training_scores, validation_rows, validation_seed,
)
from tests.conftest import CONCEPT, PLACEHOLDER, compose_train


def plateau(n=120, drop=40, seed=0):
    """A loss that falls for `drop` evaluations, then only wobbles (noise 1 % of the drop)."""
    noise = np.random.default_rng(seed).normal(0, 0.0005, n)
    return np.concatenate([np.linspace(0.10, 0.05, drop), np.full(n - drop, 0.05)]) + noise


def test_dvar_stops_on_a_plateau_and_not_on_a_falling_curve():
    flat = plateau(n=30, drop=10)
    assert dvar_ratio(flat[:19], 20) is None  # fewer losses than the window
    assert dvar_ratio(flat[:20], 20) == pytest.approx(1.0)  # the window is everything
    assert dvar_ratio(flat, 20) < 0.01  # 20 losses on the plateau: the window holds nearly none of the variance
    first = next(n for n in range(1, len(flat) + 1) if should_stop(flat[:n], 20, 0.39))
    assert 20 < first <= 30  # once most of the window lies on the plateau
    # The same length of a loss that keeps falling (with the same noise): never.
    noise = np.random.default_rng(0).normal(0, 0.0005, 30)
    for falling in (np.linspace(0.10, 0.05, 30) + noise, 0.10 - 0.05 * (np.arange(30) / 30) ** 2 + noise):
        assert not any(should_stop(falling[:n], 20, 0.39) for n in range(1, 31))
        assert dvar_ratio(falling, 20) > 0.39
    # DVAR is relative: a line that falls long enough stops too, at about 1.6 windows (var ratio (w/n)^2).
    line = np.linspace(0.1, 0.02, 100)
    assert next(n for n in range(1, 101) if should_stop(line[:n], 20, 0.39)) == pytest.approx(32, abs=1)


def test_dvar_ratio_values_and_patience():
    losses = [1.0, 3.0, 1.0, 3.0, 2.0, 2.0]
    assert dvar_ratio(losses, 2) == pytest.approx(0.0 / np.var(losses))
    assert dvar_ratio(losses[:4], 2) == pytest.approx(1.0 / 1.0)  # var([1, 3]) = var([1, 3, 1, 3]) = 1
    assert dvar_ratio([0.5] * 5, 3) == 0.0  # constant: no variance at all is a plateau
    wobble = [1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 3.0]
    assert should_stop(wobble, 2, 0.5, patience=1)
    assert not should_stop(wobble, 2, 0.5, patience=2)  # the ratio one evaluation before was 1
    assert should_stop([*wobble, 3.0], 2, 0.5, patience=2)


def test_validation_rows_are_fixed_by_the_seed_and_cover_every_view_first():
    rows = validation_rows(0, num_variants=10, num_captions=27, size=8)
    assert rows.dtype == np.int32 and rows.shape == (8, 2)
    assert len(set(rows[:, VARIANT])) == 8 and rows[:, CAPTION].max() < 27
    np.testing.assert_array_equal(rows, validation_rows(0, 10, 27, 8))
    assert not np.array_equal(rows, validation_rows(1, 10, 27, 8))
    many = validation_rows(0, 3, 2, 7)
    assert sorted(many[:3, VARIANT]) == [0, 1, 2] and sorted(many[3:6, VARIANT]) == [0, 1, 2]
    assert validation_seed(0) != 0 and validation_seed(5) != 5 and validation_seed(5) == validation_seed(5)


def test_best_embedding_keeps_the_best_value_and_its_vectors():
    saved = []
    vectors = iter([np.full((1, 2), float(i)) for i in range(10)])
    best = BestEmbedding("validation_loss", lambda step, v: saved.append((step, v[0, 0])))
    for step, loss in [(10, 0.5), (20, 0.4), (30, 0.4), (40, 0.6), (50, float("nan"))]:
        best.offer(step, {"validation_loss": loss}, lambda: next(vectors))
    assert saved == [(10, 0.0), (20, 1.0)] and best.as_metrics() == {"by": "validation_loss", "step": 20, "value": 0.4}
    again = BestEmbedding("validation_loss", lambda *_: None)
    again.restore(best.state())
    assert again.as_metrics() == best.as_metrics() and again.vectors.tobytes() == best.vectors.tobytes()
    score = BestEmbedding("attribute_score", lambda *_: None)
    for step, value in [(10, 0.5), (20, 1.0), (30, 0.75)]:
        score.offer(step, {"attribute_score": value, "validation_loss": 0.0}, lambda: np.zeros((1, 2)))
    assert score.step == 20  # higher is better for a score
    assert not score.offer(40, {"clip_i": 1.0}, lambda: np.zeros((1, 2)))  # not what it follows


def test_requested_attributes_of_prompts():
    assert requested_attributes("a photo of") == {}
    assert requested_attributes("on a green background") == {"background": "green"}
    assert requested_attributes("a small red star on the left") == {"size": "small", "color": "red", "shape": "star",
                                                                     "position": "left"}


def test_training_scores_of_the_concept_images_themselves():
    from finetune.evaluation.scores import concept_attributes
    from finetune.evaluation.stage import reference_images

    images = reference_images(CONCEPT, 64)  # the concept as it is: every attribute right, no edit obeyed
    prompts = [f"a photo of {PLACEHOLDER}"] * 3 + [f"{PLACEHOLDER} on a green background"] * 2
    scores = training_scores(images, prompts, PLACEHOLDER, target=concept_attributes(CONCEPT))
    assert scores == {"attribute_score": 1.0, "edit_score": 0.0}


@pytest.mark.parametrize("overrides, key", [
    (["trainer.early_stopping=true", "trainer.validation.every=0"], "trainer.validation.every"),
    (["eval.best_by=clip_i", "eval.score_every=0"], "eval.best_by"),
    (["eval.best_by=attribute_score", "eval.enabled=false"], "eval.best_by"),
    (["trainer.early_stopping_threshold=0"], "trainer.early_stopping_threshold"),
    (["trainer.early_stopping_window=1"], "trainer.early_stopping_window"),
    (["eval.best_by=loss"], "eval.best_by"),
])
def test_bad_monitoring_settings_are_refused_naming_the_key(overrides, key):
    from finetune.validation import validate_train_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_train_config(compose_train(*overrides))
