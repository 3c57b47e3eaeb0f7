import numpy as np
import pytest

from finetune.diffusion.schedule import NoiseSchedule
from finetune.errors import ConfigError
from finetune.sampling import DDIMSampler, SamplerSettings, ddim_step, ddim_timesteps

LATENT = (4, 4, 2)


def test_ddim_timesteps_sd_v1_50_steps():
    # diffusers DDIMScheduler "leading" + steps_offset=1: step_ratio = 1000 // 50 = 20.
    ts = ddim_timesteps(50)
    assert len(ts) == 50
    assert ts[0] == 981 and ts[1] == 961 and ts[-1] == 1
    assert np.all(np.diff(ts) == -20)


def test_ddim_timesteps_other_counts():
    ts = ddim_timesteps(30)  # step_ratio 33 -> 29*33+1 = 958
    assert ts[0] == 958 and ts[-1] == 1 and len(ts) == 30
    assert list(ddim_timesteps(1)) == [1]
    assert list(ddim_timesteps(4, steps_offset=0)) == [750, 500, 250, 0]
    with pytest.raises(ConfigError):
        ddim_timesteps(0)
    with pytest.raises(ConfigError):
        ddim_timesteps(1000)  # would need alphas_cumprod[1000]


def test_settings_validation():
    with pytest.raises(ConfigError, match="num_steps"):
        SamplerSettings(num_steps=0)
    with pytest.raises(ConfigError, match="guidance_scale"):
        SamplerSettings(guidance_scale=float("nan"))
    with pytest.raises(ConfigError, match="eta"):
        SamplerSettings(eta=-1.0)


def test_ddim_step_eta0_hand_computation():
    a_t, a_prev = 0.5, 0.8
    x = np.full((1, 2, 2, 1), 2.0, np.float32)
    eps = np.full_like(x, 0.5)
    prev, x0 = ddim_step(x, eps, a_t, a_prev, eta=0.0)
    # x0 = (2 - sqrt(0.5)*0.5) / sqrt(0.5) = 2*sqrt(2) - 0.5
    expected_x0 = 2 * np.sqrt(2) - 0.5
    np.testing.assert_allclose(x0, expected_x0, rtol=1e-6)
    # prev = sqrt(0.8)*x0 + sqrt(0.2)*0.5
    np.testing.assert_allclose(prev, np.sqrt(0.8) * expected_x0 + np.sqrt(0.2) * 0.5, rtol=1e-6)
    assert prev.dtype == np.float32 and x0.dtype == np.float32


def test_ddim_step_eta_sigma_formula():
    a_t, a_prev = 0.5, 0.8
    x = np.zeros((1, 1, 1, 1), np.float32)
    eps = np.ones_like(x)
    noise = np.ones_like(x)
    prev, x0 = ddim_step(x, eps, a_t, a_prev, eta=1.0, noise=noise)
    sigma = np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    expected = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps + sigma * noise
    np.testing.assert_allclose(prev, expected, rtol=1e-6)
    with pytest.raises(ValueError):
        ddim_step(x, eps, a_t, a_prev, eta=1.0)


def _exact_eps_fn(schedule, x0):
    """Denoiser that knows x0: eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)."""
    ac = schedule.alphas_cumprod

    def fn(latents, t, context):
        a = ac[int(t[0])]
        x0b = np.broadcast_to(x0, latents.shape)
        return ((latents - np.sqrt(a) * x0b) / np.sqrt(1 - a)).astype(np.float32)

    return fn


def _contexts(b=2, L=3, D=5):
    rng = np.random.default_rng(1)
    return rng.standard_normal((b, L, D)).astype(np.float32), np.zeros((b, L, D), np.float32)


def test_exact_denoiser_recovers_x0():
    # A schedule whose alphas_cumprod[0] is ~1 makes the final DDIM step land on x0.
    schedule = NoiseSchedule(beta_start=1e-12, beta_end=0.012)
    x0 = np.random.default_rng(5).uniform(-1, 1, (2, *LATENT)).astype(np.float32)
    sampler = DDIMSampler(schedule, SamplerSettings(num_steps=20, guidance_scale=1.0))
    cond, _ = _contexts()
    out = sampler.sample(_exact_eps_fn(schedule, x0), cond, None, LATENT, progress=False)
    np.testing.assert_allclose(out, x0, atol=1e-4)


def test_exact_denoiser_sd_schedule_final_alpha():
    # With set_alpha_to_one=False the last step goes to alphas_cumprod[0] (< 1): for eta=0 the
    # implied noise stays the eps of the first step, so out = sqrt(a0) x0 + sqrt(1-a0) eps_T.
    schedule = NoiseSchedule()
    x0 = np.random.default_rng(5).uniform(-1, 1, (2, *LATENT)).astype(np.float32)
    settings = SamplerSettings(num_steps=50, guidance_scale=1.0, seed=3)
    cond, _ = _contexts()
    out = DDIMSampler(schedule, settings).sample(_exact_eps_fn(schedule, x0), cond, None, LATENT, progress=False)
    noise = np.random.default_rng(3).standard_normal((2, *LATENT), dtype=np.float32)
    ac = schedule.alphas_cumprod
    eps_T = (noise - np.sqrt(ac[981]) * x0) / np.sqrt(1 - ac[981])
    expected = np.sqrt(ac[0]) * x0 + np.sqrt(1 - ac[0]) * eps_T
    np.testing.assert_allclose(out, expected, atol=1e-4)


class CountingFn:
    def __init__(self):
        self.calls = []

    def __call__(self, latents, t, context):
        self.calls.append((latents.shape, t.shape, t.dtype, context.shape, t[0]))
        assert latents.dtype == np.float32
        return np.zeros_like(latents)


@pytest.mark.parametrize("guidance, factor", [(7.5, 2), (1.0, 1)])
def test_one_batched_call_per_step(guidance, factor):
    cond, uncond = _contexts(b=3)
    fn = CountingFn()
    DDIMSampler(NoiseSchedule(), SamplerSettings(num_steps=7, guidance_scale=guidance)).sample(
        fn, cond, uncond, LATENT, progress=False
    )
    assert len(fn.calls) == 7
    for lat_shape, t_shape, t_dtype, ctx_shape, _ in fn.calls:
        assert lat_shape == (3 * factor, *LATENT)
        assert t_shape == (3 * factor,) and t_dtype == np.int32
        assert ctx_shape == (3 * factor, 3, 5)
    assert [c[4] for c in fn.calls] == list(ddim_timesteps(7))


def test_guidance_math():
    # uncond half predicts u, cond half predicts c: guided eps = u + g (c - u).
    cond, uncond = _contexts(b=2)
    cond = np.ones_like(cond)
    u, c, g = 0.1, 0.3, 4.0
    seen = {}

    def fn(latents, t, context):
        b = latents.shape[0] // 2
        np.testing.assert_array_equal(context[:b], uncond)
        np.testing.assert_array_equal(context[b:], cond)
        np.testing.assert_array_equal(latents[:b], latents[b:])
        out = np.empty_like(latents)
        out[:b], out[b:] = u, c
        return out

    noise = np.random.default_rng(0).standard_normal((2, *LATENT)).astype(np.float32)
    schedule = NoiseSchedule()
    sampler = DDIMSampler(schedule, SamplerSettings(num_steps=1, guidance_scale=g))
    out = sampler.sample(fn, cond, uncond, LATENT, initial_noise=noise, progress=False)
    a_t, a_prev = sampler.alpha_pair(1)
    expected, _ = ddim_step(noise, np.full_like(noise, u + g * (c - u)), a_t, a_prev)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert a_prev == schedule.alphas_cumprod[0]


def _noisy_fn(latents, t, context):
    # Depends on the context so guidance has an effect.
    return (0.1 * latents + context.mean(axis=(1, 2))[:, None, None, None]).astype(np.float32)


def test_same_seed_same_output_and_eta():
    cond, uncond = _contexts()
    schedule = NoiseSchedule()

    def run(seed, eta):
        s = SamplerSettings(num_steps=5, guidance_scale=3.0, eta=eta, seed=seed)
        return DDIMSampler(schedule, s).sample(_noisy_fn, cond, uncond, LATENT, progress=False)

    a, b = run(0, 0.0), run(0, 0.0)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (2, *LATENT)
    assert not np.array_equal(a, run(1, 0.0))
    e1, e2 = run(0, 1.0), run(0, 1.0)
    np.testing.assert_array_equal(e1, e2)
    assert not np.allclose(e1, a)
    assert not np.array_equal(e1, run(1, 1.0))


def test_tf_denoise_fn_accepted():
    tf = pytest.importorskip("tensorflow")

    @tf.function
    def fn(latents, t, context):
        return tf.zeros_like(latents)

    cond, uncond = _contexts()
    out = DDIMSampler(NoiseSchedule(), SamplerSettings(num_steps=2)).sample(fn, cond, uncond, LATENT, progress=False)
    assert isinstance(out, np.ndarray) and out.shape == (2, *LATENT)


def test_initial_noise_shape_checked():
    cond, uncond = _contexts()
    with pytest.raises(ValueError, match="initial_noise"):
        DDIMSampler(NoiseSchedule(), SamplerSettings(num_steps=2)).sample(
            CountingFn(), cond, uncond, LATENT, initial_noise=np.zeros((1, 4, 4, 2)), progress=False
        )
