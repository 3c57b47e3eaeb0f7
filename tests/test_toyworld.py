"""Tests of finetune.toyworld: vocabulary, renderer, captions, checker, datasets (numpy + PIL only).

The checker-accuracy test prints per-attribute accuracies on clean and degraded renders
(run with `pytest -s tests/test_toyworld.py` to see them).
"""

from __future__ import annotations

import collections
import time

import numpy as np
import pytest
from PIL import Image

from finetune.toyworld import (
    ATTRIBUTES,
    BACKGROUND_RGB,
    COLOR_RGB,
    NEVER_NAMED,
    Scene,
    accuracy,
    caption,
    describe,
    full_caption,
    generate,
    is_nameable,
    load,
    matches,
    measure,
    nameable_values,
    never_named_values,
    render,
    sample_scene,
    save,
)
from finetune.toyworld.attributes import FORBIDDEN_WORDS, caption_vocabulary
from finetune.toyworld.captions import CAPTION_WORDS
from finetune.toyworld.checker import MEASURED
from finetune.toyworld.degrade import down_up, gaussian_blur

N_ACCURACY = 2000
N_CAPTIONS = 2000
MIN_CLEAN_ACCURACY = 0.98
MIN_DEGRADED_ACCURACY = 0.95  # regression guard; the measured values are reported


@pytest.fixture(scope="module")
def dataset():
    return generate(N_ACCURACY, seed=2024)


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_is_consistent():
    assert set(ATTRIBUTES) == {"shape", "color", "size", "position", "background", "pattern"}
    assert set(ATTRIBUTES) == set(MEASURED)
    for name, values in ATTRIBUTES.items():
        assert len(values) == len(set(values)) >= 2, name
    assert 6 <= len(ATTRIBUTES["color"]) <= 8
    assert 4 <= len(ATTRIBUTES["background"]) <= 6
    assert len(set(BACKGROUND_RGB.values())) == len(BACKGROUND_RGB)
    assert len(set(COLOR_RGB.values())) == len(COLOR_RGB)
    # A same-named background and shape color are the same RGB.
    for name in set(COLOR_RGB) & set(BACKGROUND_RGB):
        assert COLOR_RGB[name] == BACKGROUND_RGB[name]
    # At least one value is drawn but never named, and each attribute keeps nameable values.
    assert never_named_values() == [("shape", "crescent"), ("pattern", "checkered")]
    for name, values in NEVER_NAMED.items():
        assert values <= set(ATTRIBUTES[name])
        assert not is_nameable(name, next(iter(values)))
        assert len(nameable_values(name)) >= 2
        assert values <= FORBIDDEN_WORDS
    with pytest.raises(ValueError, match="unknown"):
        is_nameable("shape", "hexagon")


def test_caption_words_are_single_clip_tokens():
    from finetune.tokens.tokenizer import ClipTokenizer

    tokenizer = ClipTokenizer()
    for word in sorted(caption_vocabulary() | CAPTION_WORDS):
        assert len(tokenizer.encode(word)) == 1, word


# ----------------------------------------------------------------------------- scenes and rendering


def test_scene_validation_and_round_trip():
    scene = Scene("star", "red", "small", "left", "blue", "dotted", seed=5)
    assert scene.attributes == {"shape": "star", "color": "red", "size": "small", "position": "left",
                                "background": "blue", "pattern": "dotted"}
    assert Scene.from_dict(scene.to_dict()) == scene
    with pytest.raises(ValueError, match="may not equal"):
        Scene("star", "blue", "small", "left", "blue", "dotted")
    with pytest.raises(ValueError, match="unknown shape"):
        Scene("hexagon", "red", "small", "left", "blue", "dotted")
    with pytest.raises(ValueError, match="unknown background"):
        Scene("star", "red", "small", "left", "black", "dotted")


def test_render_is_a_pure_antialiased_function_of_the_scene():
    scene = Scene("heart", "orange", "large", "right", "gray", "striped", seed=11)
    image = render(scene)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, render(Scene.from_dict(scene.to_dict())))
    # The seed only moves, scales and turns the shape a little.
    other = render(Scene("heart", "orange", "large", "right", "gray", "striped", seed=12))
    assert not np.array_equal(image, other)
    assert np.abs(image.astype(int) - other.astype(int)).mean() < 40
    # Background in the corners; the colour, its darker shade and edge mixtures inside.
    np.testing.assert_array_equal(image[0, 0], BACKGROUND_RGB["gray"])
    np.testing.assert_array_equal(image[-1, -1], BACKGROUND_RGB["gray"])
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # antialiased edges
    big = render(scene, size=128)
    assert big.shape == (128, 128, 3)
    small_again = np.asarray(Image.fromarray(big).resize((64, 64), Image.Resampling.BOX))
    assert np.abs(small_again.astype(int) - image.astype(int)).mean() < 3


def test_sample_scene_is_uniform_and_never_paints_on_its_own_color():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(N_CAPTIONS)]
    assert all(s.color != s.background for s in scenes)
    for name, values in ATTRIBUTES.items():
        counts = collections.Counter(getattr(s, name) for s in scenes)
        assert set(counts) == set(values), name
        assert min(counts.values()) > 0.5 * N_CAPTIONS / len(values), (name, counts)


def test_generate_is_deterministic_and_fast():
    start = time.perf_counter()
    images, captions, scenes = generate(500, seed=3)
    elapsed = time.perf_counter() - start
    print(f"\ntoyworld.generate: {500 / elapsed:.0f} images/s")
    assert elapsed < 5.0  # ~1000/s on one idle core; generous for a loaded machine
    assert images.shape == (500, 64, 64, 3) and images.dtype == np.uint8
    again_images, again_captions, again_scenes = generate(500, seed=3)
    np.testing.assert_array_equal(images, again_images)
    assert captions == again_captions and scenes == again_scenes
    head_images, head_captions, _ = generate(20, seed=3)  # a prefix does not depend on n
    np.testing.assert_array_equal(head_images, images[:20])
    assert head_captions == captions[:20]
    other_images, other_captions, _ = generate(20, seed=4)
    assert not np.array_equal(other_images, images[:20]) and other_captions != captions[:20]
    oracle_images, oracle_captions, oracle_scenes = generate(20, seed=3, oracle=True)
    np.testing.assert_array_equal(oracle_images, images[:20])
    assert oracle_captions == [full_caption(s) for s in oracle_scenes]


def test_save_and_load_round_trip(tmp_path):
    images, captions, scenes = generate(8, seed=1)
    path = save(tmp_path / "toy.npz", images, captions, scenes)
    loaded_images, loaded_captions, loaded_scenes = load(path)
    np.testing.assert_array_equal(loaded_images, images)
    assert loaded_captions == captions and loaded_scenes == scenes


# ----------------------------------------------------------------------------- captions


def test_captions_never_name_the_never_named_values():
    rng = np.random.default_rng(7)
    allowed = caption_vocabulary() | CAPTION_WORDS
    seen = collections.Counter()
    hidden_scenes = 0
    for _ in range(N_CAPTIONS):
        scene = sample_scene(rng)
        assert scene.color != scene.background
        text = caption(scene, rng)
        words = text.split()
        assert set(words) <= allowed, text
        assert not set(words) & FORBIDDEN_WORDS, text
        for name, value in scene.attributes.items():
            if value in words and is_nameable(name, value):
                seen[(name, value)] += 1
        # The caption never lies: a named value is the scene's value.
        if " background" in text:
            assert f"{scene.background} background" in text, (text, scene)
        rest = text.replace(f"{scene.background} background", "background").split()
        for name, values in ATTRIBUTES.items():
            if name != "background":
                named = [v for v in values if v in rest]
                assert named in ([], [getattr(scene, name)]), (text, scene)
        hidden_scenes += scene.shape == "crescent" or scene.pattern == "checkered"
        full = full_caption(scene).split()
        for name, value in scene.attributes.items():
            assert (value in full) == is_nameable(name, value), (full, scene)
    assert hidden_scenes > N_CAPTIONS / 5
    for name in ATTRIBUTES:
        for value in nameable_values(name):
            assert seen[(name, value)] > 0, (name, value)


def test_describe_composes_prompts_with_placeholders():
    assert describe({"color": "red", "shape": "star"}) == "a red star"
    assert describe({}) == "a shape"
    assert describe({"color": "orange", "size": "large"}) == "a large orange shape"
    assert describe({"shape": "circle", "background": "blue", "position": "left"}) == (
        "a circle on the left on a blue background")
    assert describe({"shape": "star", "pattern": "checkered"}, words={"pattern": "<checks>"}) == "a <checks> star"
    assert describe({"color": "red"}, words={"shape": "<moon>"}) == "a red <moon>"
    with pytest.raises(ValueError, match="never named"):
        describe({"shape": "crescent"})
    with pytest.raises(ValueError, match="unknown attribute"):
        describe({"mood": "happy"})


# ----------------------------------------------------------------------------- checker


def test_checker_accuracy_clean_and_degraded(dataset):
    images, _, scenes = dataset
    conditions = {
        "clean": images,
        "blur sigma 1.0": gaussian_blur(images, 1.0),
        "blur sigma 1.5": gaussian_blur(images, 1.5),
        "2x down-up": down_up(images, 2),
    }
    results = {}
    for name, batch in conditions.items():
        results[name] = accuracy(batch, scenes)
    print(f"\ntoyworld checker accuracy on {len(scenes)} scenes (seed 2024):")
    for name, acc in results.items():
        print(f"  {name:15s} " + " ".join(f"{a}={v:.4f}" for a, v in acc.items()))
    for attribute, value in results["clean"].items():
        assert value >= MIN_CLEAN_ACCURACY, ("clean", attribute, value)
    for name, acc in results.items():
        for attribute, value in acc.items():
            assert value >= MIN_DEGRADED_ACCURACY, (name, attribute, value)


def test_checker_on_empty_and_resized_images():
    blank = np.zeros((64, 64, 3), np.uint8)
    blank[:] = BACKGROUND_RGB["green"]
    measured = measure(blank)
    assert measured["background"] == "green"
    assert all(measured[a] is None for a in MEASURED if a != "background")
    assert not any(matches(measured, {"shape": "star", "color": "red"}).values())

    scene = Scene("cross", "purple", "large", "center", "white", "striped", seed=3)
    big = render(scene, size=128)
    assert all(matches(measure(big), scene).values())
    with pytest.raises(ValueError, match="uint8"):
        measure(big.astype(np.float32))


def test_matches_checks_only_the_asked_attributes():
    scene = Scene("triangle", "green", "small", "right", "yellow", "plain", seed=9)
    measured = measure(render(scene))
    assert matches(measured, scene) == dict.fromkeys(ATTRIBUTES, True)
    assert matches(measured, {"color": "green", "shape": "circle"}) == {"color": True, "shape": False}
    assert matches(measured, scene, attributes=["size"]) == {"size": True}
    with pytest.raises(ValueError, match="unknown attribute"):
        matches(measured, scene, attributes=["mood"])
    details = measure(render(scene), details=True)["_scores"]
    assert max(details["shape"], key=details["shape"].get) == "triangle"


# ----------------------------------------------------------------------------- preview script


def test_preview_script_writes_a_grid(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "toyworld_preview.py"
    spec = importlib.util.spec_from_file_location("toyworld_preview", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "grid.png"
    module.main([str(out), "--count", "7", "--seed", "2"])
    with Image.open(out) as image:
        assert image.mode == "RGB"
        assert image.width >= 6 * 192 and image.height >= 2 * 192
