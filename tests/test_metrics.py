import numpy as np

from finetune.evaluation.metrics import attribute_score, clip_i, clip_t, per_attribute_accuracy, remove_placeholder


def test_clip_i_of_a_set_with_itself_beats_another_set():
    rng = np.random.default_rng(0)
    concept = rng.standard_normal((1, 16)) + 0.3 * rng.standard_normal((6, 16))
    other = rng.standard_normal((1, 16)) + 0.3 * rng.standard_normal((6, 16))
    assert clip_i(concept, concept) > clip_i(concept, other) + 0.3
    assert clip_i(concept, concept) <= 1.0 + 1e-9


def test_clip_i_exact_values():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert clip_i(a, a) == 0.5  # (1 + 0 + 0 + 1) / 4
    assert clip_i(a, -a) == -0.5


def test_clip_t_pairs_rows():
    t = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert clip_t(t, t * 3) == 1.0
    assert clip_t(t, t[::-1]) == 0.0


def test_remove_placeholder():
    assert remove_placeholder("a photo of <tok> on the beach", "<tok>") == "a photo of on the beach"
    assert remove_placeholder("<tok>", "<tok>") == ""


def test_attribute_scores():
    target = {"shape": "star", "color": "red"}
    measured = [{"shape": "star", "color": "red"}, {"shape": "star", "color": "blue"}, {"shape": "circle", "color": "red"}]
    assert attribute_score(measured, target) == 1 / 3
    assert per_attribute_accuracy(measured, target) == {"shape": 2 / 3, "color": 2 / 3}
    assert attribute_score([], target) == 0.0
