"""The exact denoiser of a finite latent set (finetune/diffusion/exact.py): the reference that
docs/generate.md runs img2img on."""

import numpy as np
import pytest

from finetune.diffusion.exact import exact_eps, posterior_mean
from finetune.diffusion.schedule import NoiseSchedule
from finetune.sampling import SamplerSettings
from finetune.sampling.img2img import img2img_latents
from finetune.sampling.loop import add_noise, alpha_at, denoise, start_index

SHAPE = (4, 4, 3)
ALPHAS = NoiseSchedule().alphas_cumprod


def points(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype("float32")


def run_on(data):
    """A denoise_fn for the sampling loop: every row under the exact denoiser of `data`."""
    return lambda x, t, context: np.stack([exact_eps(x[b], ALPHAS[int(t[b])], data) for b in range(len(x))])


def test_one_point_gives_back_the_noise_that_was_added():
    z, e = points(1), points(1, seed=1)[0]
    for a in (0.999, 0.69, 0.05):
        x_t = add_noise(z[0], e, a)
        np.testing.assert_allclose(posterior_mean(x_t, a, z), z[0], atol=1e-5)
        np.testing.assert_allclose(exact_eps(x_t, a, z), e, atol=1e-4)


def test_weights_follow_the_gaussian_likelihood():
    data = np.stack([np.zeros(SHAPE), np.ones(SHAPE)]).astype("float32")
    a = 0.5
    # halfway between sqrt(a) * 0 and sqrt(a) * 1: equal weights
    np.testing.assert_allclose(posterior_mean(np.full(SHAPE, np.sqrt(a) / 2), a, data), 0.5, atol=1e-6)
    # x_t = 0: weights 1 : exp(-|sqrt(a) 1|^2 / (2 (1 - a))) = exp(-n a / (2 (1 - a)))
    w1 = np.exp(-np.prod(SHAPE) * a / (2 * (1 - a)))
    np.testing.assert_allclose(posterior_mean(np.zeros(SHAPE), a, data), w1 / (1 + w1), rtol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        posterior_mean(np.zeros(SHAPE), a, data[:0])


def distances(out, data):
    """L2 distance [B, N] of every output to every data point."""
    return np.linalg.norm((out[:, None] - data[None]).reshape(len(out), len(data), -1), axis=-1)


def test_ddim_on_the_exact_denoiser_ends_on_a_data_point():
    data = points(5) * 3  # about 25 apart
    settings = SamplerSettings(num_steps=25, guidance_scale=1.0, eta=0.0, seed=0)
    out = denoise(run_on(data), settings, points(3, seed=7), [np.zeros((3, 1, 1), "float32")], None, progress=False)
    d = np.sort(distances(out, data), axis=1)
    # what is left is the last step's noise: sqrt(1 - alphas_cumprod[0]) = 0.029 per value (measured 0.16-0.20)
    assert np.all(d[:, 0] < 0.3) and np.all(d[:, 1] > 20), d


def test_img2img_on_the_exact_denoiser_keeps_only_a_vanishing_part_of_the_input():
    """The reason docs/generate.md gives for the img2img gate: from an input that no data point is
    near, every strength that runs a step ends next to a data point. What is left of the input is
    the fraction sqrt(1 - a_end) * sqrt(a_s / (1 - a_s)) of its distance to that point, a_s the
    alphas_cumprod img2img starts from (0.043 at strength 0.3 with 25 steps)."""
    data, image = points(5), np.full((1, *SHAPE), 4.0, "float32")
    settings = SamplerSettings(num_steps=25, guidance_scale=1.0, eta=0.0, seed=0)
    context = np.zeros((1, 1, 1), "float32")
    for strength in (0.1, 0.3, 1.0):
        out = img2img_latents(run_on(data), settings, image, points(1, seed=3), [context], None, strength,
                              progress=False)
        d = distances(out, data)[0]
        k = d.argmin()
        left = d[k] / np.linalg.norm(image[0] - data[k])
        a_s = alpha_at(settings, start_index(25, strength)) if strength < 1 else 0.0
        predicted = np.sqrt(1 - ALPHAS[0]) * np.sqrt(a_s / (1 - a_s))
        assert left < 0.15, (strength, left)  # measured 0.144, 0.044, 0.008
        if strength < 1:
            assert abs(left - predicted) < 0.2 * predicted + 0.01, (strength, left, predicted)
