"""The generation modes as plain functions on NumPy with a toy denoiser (no model): prompt weights,
the shared DDIM loop, img2img strength, inpainting's kept region, masks and seams, mixing, walks."""

import numpy as np
import pytest

from finetune.errors import ConfigError, DataError
from finetune.sampling import DDIMSampler, SamplerSettings
from finetune.diffusion.schedule import NoiseSchedule
from finetune.sampling.img2img import check_strength, fit_image, img2img_latents
from finetune.sampling.inpaint import (box_mask, feather, inpaint_latents, latent_mask, mask_from_image, pad_canvas,
                                       parse_box, paste_back)
from finetune.sampling.loop import add_noise, alpha_at, denoise, start_index
from finetune.sampling.mix import blend_encodings, normalized_weights
from finetune.sampling.prompts import parse_weights
from finetune.sampling.walk import slerp, walk_inputs

SHAPE = (2, 4, 4, 3)


def toy_denoise(x, t, context):
    """Depends on the latents, the timestep and the context (each prompt row pulls differently)."""
    c = np.asarray(context).mean(axis=(1, 2))[:, None, None, None]
    return 0.3 * np.asarray(x) + 0.01 * np.asarray(t)[:, None, None, None] / 1000 + c


@pytest.fixture
def contexts():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 5, 6)).astype("float32"), rng.standard_normal((1, 5, 6)).astype("float32")


def noise(seed=1, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# ---------------------------------------------------------------- prompt weights
@pytest.mark.parametrize("text,expected", [
    ("a photo of <concept>", [("a photo of <concept>", 1.0)]),
    ("a (red:1.3) heart", [("a ", 1.0), ("red", 1.3), (" heart", 1.0)]),
    ("a (red) [heart]", [("a ", 1.0), ("red", 1.1), (" ", 1.0), ("heart", 1 / 1.1)]),
    ("((red))", [("red", 1.1 * 1.1)]),
    ("((red:2) blue)", [("red", 2 * 1.1), (" blue", 1.1)]),
    (r"a \(red\) heart", [("a (red) heart", 1.0)]),
    ("a (red heart", [("a ", 1.0), ("red heart", 1.1)]),
    ("(red:0.5)", [("red", 0.5)]),
])
def test_parse_weights(text, expected):
    got = parse_weights(text)
    assert [c for c, _ in got] == [c for c, _ in expected]
    np.testing.assert_allclose([w for _, w in got], [w for _, w in expected], rtol=1e-12)


def test_weighted_prompt_too_long_is_one_config_error():
    from finetune.sampling.prompts import weighted_ids
    from finetune.tokens.tokenizer import ClipTokenizer

    tok = ClipTokenizer()
    ids, weights = weighted_ids(tok, "a (red:1.5) heart")
    np.testing.assert_array_equal(ids, tok(["a red heart"])[0])
    assert weights[2] == pytest.approx(1.5) and weights[1] == weights[3] == 1.0
    with pytest.raises(ConfigError, match="tokens"):
        weighted_ids(tok, "(red:1.2) " * 80)


# ---------------------------------------------------------------- the loop
@pytest.mark.parametrize("eta,guidance", [(0.0, 5.0), (0.5, 7.5), (0.0, 1.0)])
def test_denoise_is_ddim_sampler_bit_for_bit(contexts, eta, guidance):
    cond, uncond = contexts
    settings = SamplerSettings(num_steps=6, guidance_scale=guidance, eta=eta, seed=3)
    x = noise()
    expected = DDIMSampler(NoiseSchedule(), settings).sample(toy_denoise, cond, uncond, SHAPE[1:], initial_noise=x,
                                                             progress=False)
    got = denoise(toy_denoise, settings, x, [cond], uncond, progress=False)
    np.testing.assert_array_equal(got, expected)


def test_multi_prompt_guidance_reduces_to_one_prompt(contexts):
    cond, uncond = contexts
    settings = SamplerSettings(num_steps=5, guidance_scale=4.0)
    x = noise()
    one = denoise(toy_denoise, settings, x, [cond], uncond, progress=False)
    other = cond[::-1].copy()
    both = denoise(toy_denoise, settings, x, [cond, other], uncond, [1.0, 0.0], progress=False)
    np.testing.assert_allclose(both, one, atol=1e-5)
    half = denoise(toy_denoise, settings, x, [cond, other], uncond, [0.5, 0.5], progress=False)
    assert np.abs(half - one).max() > 1e-2


def test_start_index_follows_diffusers_rule():
    assert [start_index(25, s) for s in (0.0, 0.3, 0.5, 1.0)] == [25, 18, 13, 0]


# ---------------------------------------------------------------- img2img
def test_img2img_strength_ends(contexts):
    cond, uncond = contexts
    settings = SamplerSettings(num_steps=8, guidance_scale=3.0)
    init, n = noise(7), noise(8)
    np.testing.assert_array_equal(img2img_latents(toy_denoise, settings, init, n, [cond], uncond, 0.0), init)
    full = img2img_latents(toy_denoise, settings, init, n, [cond], uncond, 1.0, progress=False)
    np.testing.assert_array_equal(full, denoise(toy_denoise, settings, n, [cond], uncond, progress=False))
    half = img2img_latents(toy_denoise, settings, init, n, [cond], uncond, 0.5, progress=False)
    start = start_index(8, 0.5)
    expected = denoise(toy_denoise, settings, add_noise(init, n, alpha_at(settings, start)), [cond], uncond,
                       start=start, progress=False)
    np.testing.assert_array_equal(half, expected)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "x", True])
def test_strength_outside_unit_interval(bad):
    with pytest.raises(ConfigError, match=r"strength.*\[0, 1\]"):
        check_strength(bad)


def test_fit_image_center_crops_then_resizes():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 255  # the centered square
    out = fit_image(image, 16)
    assert out.shape == (16, 16, 3) and out.min() == 255


# ---------------------------------------------------------------- inpaint / outpaint
def test_inpaint_keeps_the_known_latents(contexts):
    cond, uncond = contexts
    settings = SamplerSettings(num_steps=6, guidance_scale=3.0)
    init, n = noise(7), noise(8)
    m = np.zeros((4, 4, 1), np.float32)
    m[:, :2] = 1.0
    out = inpaint_latents(toy_denoise, settings, init, n, m, [cond], uncond, progress=False)
    np.testing.assert_array_equal(out[:, :, 2:], init[:, :, 2:])
    assert np.abs(out[:, :, :2] - init[:, :, :2]).max() > 0.1


def test_masks_boxes_and_feathering():
    assert parse_box("2,3,10,12", 16, 16) == (2, 3, 10, 12)
    for bad in ("1,2,3", "5,5,2,8", "0,0,17,4", "a,b,c,d"):
        with pytest.raises(ConfigError, match="box"):
            parse_box(bad, 16, 16)
    mask = box_mask((4, 4, 8, 8), 16, 16)
    assert mask.sum() == 16
    ramp = feather(mask, 2)
    assert ramp[5, 5] == 1.0 and ramp[5, 3] == pytest.approx(2 / 3) and ramp[5, 2] == pytest.approx(1 / 3)
    assert ramp[5, 1] == 0.0 and ramp[0, 0] == 0.0
    inward = feather(mask, 1, outward=False)
    assert inward[5, 5] == 1.0 and inward[4, 4] == 0.5 and inward[3, 3] == 0.0
    lat = latent_mask(mask, 4, radius=1)
    assert lat.shape == (4, 4, 1) and lat[1, 1, 0] == 1.0 and lat[0, 0, 0] == 0.5 and lat[3, 3, 0] == 0.0
    with pytest.raises(DataError, match="mask is 8x8 pixels but the image is 16x16"):
        mask_from_image(np.zeros((8, 8, 3), np.uint8), (16, 16, 3))


def test_paste_back_is_exact_where_the_blend_is_zero():
    rng = np.random.default_rng(0)
    original, generated = (rng.integers(0, 256, (8, 8, 3)).astype(np.uint8) for _ in range(2))
    blend = feather(box_mask((2, 2, 4, 4), 8, 8), 1)
    out = paste_back(generated, original, blend)
    np.testing.assert_array_equal(out[blend == 0], original[blend == 0])
    np.testing.assert_array_equal(out[blend == 1], generated[blend == 1])


@pytest.mark.parametrize("fill", ["edge", "reflect", "white", "noise"])
def test_pad_canvas(fill):
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    canvas, mask = pad_canvas(image, 4, 0, 2, 6, fill)
    assert canvas.shape == (16, 12, 3) and mask.shape == (16, 12)
    np.testing.assert_array_equal(canvas[2:10, 4:12], image)
    assert mask.sum() == 16 * 12 - 64 and mask[2:10, 4:12].sum() == 0
    with pytest.raises(ConfigError, match="fill"):
        pad_canvas(image, 1, 0, 0, 0, "blue")


# ---------------------------------------------------------------- mix / walk
def test_blend_and_weights():
    a, b = np.ones((1, 2, 2), np.float32), 3 * np.ones((1, 2, 2), np.float32)
    np.testing.assert_allclose(blend_encodings([a, b], [1, 3]), 2.5)
    assert normalized_weights([2, 2], 2) == [0.5, 0.5]
    for bad in ([1], [-1, 2], [0, 0]):
        with pytest.raises(ConfigError, match="weights"):
            normalized_weights(bad, 2)


def test_walk_ends_and_slerp_norm():
    rng = np.random.default_rng(0)
    na, nb = rng.standard_normal((2, 4, 4, 4)).astype("float32")
    ca, cb = rng.standard_normal((2, 3, 5)).astype("float32")
    contexts, noises = walk_inputs(ca, cb, na, nb, 5)
    np.testing.assert_allclose(contexts[0], ca, atol=1e-6)
    np.testing.assert_allclose(contexts[-1], cb, atol=1e-6)
    np.testing.assert_allclose(noises[0], na, atol=1e-5)
    np.testing.assert_allclose(noises[-1], nb, atol=1e-5)
    np.testing.assert_allclose(contexts[2], (ca + cb) / 2, atol=1e-6)
    mid = slerp(na, nb, 0.5)
    # near-orthogonal high-dimensional noise: slerp keeps the norm, lerp would shrink it by ~1/sqrt(2)
    assert abs(np.linalg.norm(mid) - np.linalg.norm(na)) / np.linalg.norm(na) < 0.1
