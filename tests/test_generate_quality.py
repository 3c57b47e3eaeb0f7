"""Light gates of the acceptance measurements (scripts/generate_quality.py, numbers in
docs/generate.md): the same functions, fixed seeds, the bundled concept's learned embedding
(tests/fixtures), margins below the measured values."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EMBEDDING = str(ROOT / "tests" / "fixtures" / "red-checkered-heart.safetensors")


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("generate_quality", ROOT / "scripts" / "generate_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg, source, gen = module.load(EMBEDDING, 25)
    return module, cfg, source, gen


def test_img2img_gate(quality):
    module, _, _, gen = quality
    r = module.img2img(gen, 16, strengths=(0.0, 0.25, 0.5, 0.75, 1.0))
    rows = r["strengths"]
    distances = [rows[str(s)]["mean_pixel_distance"] for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert np.all(np.diff(distances) > 0), distances  # measured 0.012 0.081 0.091 0.142 0.403
    assert rows["0.0"]["input_kept"] == 1.0
    assert rows["1.0"]["prompt_read"] == r["txt2img_prompt_read"] >= 0.75  # measured 0.94 both


def test_img2img_keeps_what_the_prompt_does_not_contradict(quality):
    module, _, _, gen = quality
    r = module.img2img(gen, 16, strengths=(0.3,), prompt="keeping")  # "a blue circle on a yellow background"
    assert r["strengths"]["0.3"]["input_kept"] >= 0.875  # measured 0.94


def test_img2img_of_a_model_that_learned_the_toy_world_exactly_keeps_nothing(quality):
    """The issue's strength-0.3 gate asks the model to keep a shape and color its prompt contradicts;
    the exact denoiser of toy-world scenes (the loss optimum) keeps them in none (docs/generate.md)."""
    module, _, _, gen = quality
    r = module.img2img(gen, 8, strengths=(0.3,), pool=module.exact_pool(gen, 2048))["strengths"]["0.3"]
    assert r["input_kept"] == 0.0 and r["prompt_read"] >= 0.875, r  # measured 0 / 1.00 with 8192 scenes


def test_inpaint_gate(quality):
    module, _, _, gen = quality
    r = module.inpaint(gen, 16)
    assert r["outside_dilated_mask_max_abs_diff"] == 0
    assert r["outpaint_original_pixels_exact"] == 1.0
    assert r["inside_shape_read"] >= 0.625 and r["inside_color_read"] >= 0.8  # measured 0.75, 1.0


def test_mix_gate(quality):
    module, _, _, gen = quality
    placeholder = next(iter(gen.tokenizer.placeholders))
    r = module.mix(gen, 16, placeholder, weights=(0.0, 0.75), modes=("blend",))["blend"]
    assert r["0.0"]["concept_pattern"] >= 0.9 and r["0.0"]["other_color"] == 0.0
    assert r["0.75"]["both"] >= 0.375  # measured 0.5


def test_walk_gate(quality):
    module, cfg, source, gen = quality
    placeholder = next(iter(gen.tokenizer.placeholders))
    clip = module.walk(gen, 1, placeholder, cfg, source, seeds=(0,))["clip_i_per_frame"]
    assert clip[0] - clip[-1] > 0.4, clip  # measured 0.92 -> 0.16 over 16 seeds
    assert max(np.diff(clip)) <= 0.05, clip
