"""Converted checkpoints against the reference implementations (diffusers, transformers).

Small random SD v1-shaped models (tests/sd_reference.py) are saved as a diffusers folder and
as a CompVis single file, converted with `finetune.convert`, loaded into the project's
models and run on the same inputs as the originals. Relative error is
max|ours - reference| / max|reference|, in float32; SD v1 uses the text encoder's last
hidden state (after the final LayerNorm), which is what both sides return.
"""

import numpy as np
import pytest

from finetune.convert import checkpoint_preset
from finetune.models import build_component
from finetune.models.weights import load_weights
from tests.sd_reference import save_clip_tokenizer, small_checkpoint

torch = pytest.importorskip("torch", reason="needs torch: pip install -e '.[torch]' (or .[parity])")
pytest.importorskip("diffusers", reason="needs diffusers: pip install -e '.[parity]'")
pytest.importorskip("transformers", reason="needs transformers: pip install -e '.[parity]'")
TOL = 1e-4
SOURCES = ("diffusers", "compvis")
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


def relative_error(ours, reference) -> float:
    reference = np.asarray(reference)
    return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def ckpt():
    return small_checkpoint()


@pytest.fixture(scope="module")
def ours(ckpt):
    """The project's four models of the converted preset, built once (weights loaded per test)."""
    preset = checkpoint_preset(ckpt.converted["diffusers"]["preset"].parent)
    return preset, {c: build_component(preset, c) for c in COMPONENTS}


def loaded(ours, ckpt, source, component):
    model = ours[1][component]
    load_weights(model, ckpt.converted[source][component], f"converted {source} {component}")
    return model


@pytest.mark.parametrize("source", SOURCES)
def test_text_encoder_hidden_states(ckpt, ours, source):
    text = ckpt.models[2]
    ids = np.random.default_rng(0).integers(0, 49408, (2, 77))
    with torch.no_grad():
        expected = text(torch.from_numpy(ids)).last_hidden_state.numpy()
    got = loaded(ours, ckpt, source, "text_encoder")(ids.astype("int32"))
    assert relative_error(got, expected) <= TOL
    assert np.abs(expected).std() > 0.1


@pytest.mark.parametrize("source", SOURCES)
def test_unet_noise_prediction(ckpt, ours, source):
    unet, model = ckpt.models[0], loaded(ours, ckpt, source, "unet")
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((2, 4, 8, 8)).astype("float32")
    context = rng.standard_normal((2, 77, 32)).astype("float32")
    for t in (1, 500, 981):
        with torch.no_grad():
            expected = unet(torch.from_numpy(latents), t, torch.from_numpy(context)).sample.numpy()
        got = np.asarray(model(latents.transpose(0, 2, 3, 1), np.array([t, t]), context)).transpose(0, 3, 1, 2)
        assert relative_error(got, expected) <= TOL, t
        assert np.abs(expected).std() > 0.1


@pytest.mark.parametrize("source", SOURCES)
def test_vae_encoder_posterior(ckpt, ours, source):
    vae, model = ckpt.models[1], loaded(ours, ckpt, source, "vae_encoder")
    images = np.random.default_rng(2).uniform(-1, 1, (2, 3, 32, 32)).astype("float32")
    with torch.no_grad():
        posterior = vae.encode(torch.from_numpy(images)).latent_dist
    mean, logvar = (np.asarray(x).transpose(0, 3, 1, 2) for x in model(images.transpose(0, 2, 3, 1)))
    assert relative_error(mean, posterior.mean.numpy()) <= TOL
    assert relative_error(logvar, posterior.logvar.numpy()) <= TOL


@pytest.mark.parametrize("source", SOURCES)
def test_vae_decoder_image(ckpt, ours, source):
    vae, model = ckpt.models[1], loaded(ours, ckpt, source, "vae_decoder")
    latents = np.random.default_rng(3).standard_normal((2, 4, 4, 4)).astype("float32")
    with torch.no_grad():
        expected = vae.decode(torch.from_numpy(latents)).sample.numpy()
    # the project's decoder takes scaled latents (as the UNet produces them) and unscales itself
    scale = ours[0].vae.scaling_factor
    got = np.asarray(model(latents.transpose(0, 2, 3, 1) * scale)).transpose(0, 3, 1, 2)
    assert relative_error(got, expected) <= TOL


def make_pipeline(models, tokenizer):
    """diffusers' StableDiffusionPipeline of the small reference models, with the DDIM scheduler
    configured as SD v1's scheduler_config.json."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, set_alpha_to_one=False, timestep_spacing="leading", clip_sample=False,
        prediction_type="epsilon",
    )  # fmt: skip
    unet, vae, text = models
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    """transformers' CLIPTokenizer with OpenAI CLIP's vocabulary (from PyPI, see tests/clip_reference.py)."""
    from transformers import CLIPTokenizer

    from tests.clip_reference import get_reference

    return CLIPTokenizer.from_pretrained(save_clip_tokenizer(get_reference(), tmp_path_factory.mktemp("tokenizer")))


def test_exported_embedding_loads_with_diffusers_load_textual_inversion(ckpt, ours, clip_tokenizer, tmp_path):
    """A learned_embeds.safetensors written by the project gives diffusers exactly the project's
    vectors at the placeholder ids, the same ids as the project's tokenizer, and the same text encoding."""
    import copy

    from finetune.export.diffusers_format import save_diffusers_embedding
    from finetune.tokens.tokenizer import ClipTokenizer

    preset, _ = ours
    vectors = np.random.default_rng(4).standard_normal((2, preset.text_encoder.width)).astype("float32")
    path = save_diffusers_embedding(tmp_path / "learned_embeds.safetensors", "<cat-toy>", vectors)

    unet, vae, text = ckpt.models  # load_textual_inversion changes the tokenizer and the text encoder: use copies
    pipe = make_pipeline((unet, vae, copy.deepcopy(text)), copy.deepcopy(clip_tokenizer))
    pipe.load_textual_inversion(str(path))

    tokenizer = ClipTokenizer()
    ids = tokenizer.add_placeholder("<cat-toy>", num_vectors=2)
    assert pipe.tokenizer.convert_tokens_to_ids(["<cat-toy>", "<cat-toy>_1"]) == ids == [49408, 49409]
    table = pipe.text_encoder.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(table[ids], vectors)  # exactly, bit for bit

    prompt = "a photo of <cat-toy> on a table"
    diffusers_ids = pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer), padding="max_length",
                                   max_length=77, return_tensors="np").input_ids
    project_ids = tokenizer([prompt])
    np.testing.assert_array_equal(diffusers_ids, project_ids)

    text_encoder = build_component(preset, "text_encoder", num_placeholder_vectors=2)
    load_weights(text_encoder, ckpt.converted["diffusers"]["text_encoder"], "converted text encoder")
    text_encoder.token_embedding.set_learned_vectors(vectors)
    with torch.no_grad():
        expected = pipe.text_encoder(torch.from_numpy(diffusers_ids)).last_hidden_state.numpy()
    assert relative_error(text_encoder(project_ids), expected) <= TOL


@pytest.mark.parametrize("steps,guidance", [(10, 7.5), (25, 5.0)])
def test_ddim_sampling_matches_stable_diffusion_pipeline(ckpt, ours, clip_tokenizer, steps, guidance):
    """The project's DDIM sampler with classifier-free guidance, on converted weights, against
    diffusers' StableDiffusionPipeline + DDIMScheduler (SD v1's scheduler config, eta = 0), from
    the same initial noise, prompts and negative prompt, both encoding the prompts themselves.

    Tolerance: 1e-4 relative (max abs difference / max abs value) on the final latents and the
    decoded images. Each side computes in float32 with its own kernels and summation orders, so
    one UNet call agrees to about 1e-6 relative (test_unet_noise_prediction). With eta = 0 DDIM
    is deterministic and each step is affine in x_t and the guided epsilon: the x_t coefficients
    sqrt(a_prev / a_t) multiply to sqrt(a_0 / a_981) ~ 15 over a run, the factor by which the
    latents themselves grow, so relative to the latents' size a difference is not amplified;
    guidance scales an epsilon difference by at most 2g - 1 = 14 (g = 7.5), but only the ~1e-6
    disagreement of the two noise predictions enters. Over 10-25 steps this stays well under
    1e-4 (measured: ~1.3e-6 for 10, 25 and 50 steps), while a real discrepancy (a timestep off
    by one, a wrong alpha, guidance applied to the wrong half) shows as 1e-2 or more.
    """
    import tensorflow as tf

    from finetune.diffusion.schedule import NoiseSchedule
    from finetune.sampling import DDIMSampler, SamplerSettings
    from finetune.tokens.tokenizer import ClipTokenizer

    preset, _ = ours
    pipeline = make_pipeline(ckpt.models, clip_tokenizer)
    text_encoder, unet, decoder = (loaded(ours, ckpt, "diffusers", c) for c in ("text_encoder", "unet", "vae_decoder"))
    prompts = ["a photo of a cat", "an oil painting of a red house"]
    noise = np.random.default_rng(5).standard_normal((2, 8, 8, 4)).astype("float32")  # 16 px images, VAE factor 2
    with torch.no_grad():
        expected = pipeline(prompts, negative_prompt=[""] * len(prompts), num_inference_steps=steps, guidance_scale=guidance, eta=0.0,
                            latents=torch.from_numpy(noise.transpose(0, 3, 1, 2)), height=16, width=16,
                            output_type="latent").images.numpy()
        expected_images = pipeline.vae.decode(torch.from_numpy(expected) / preset.vae.scaling_factor).sample.numpy()

    tokenizer = ClipTokenizer()
    sampler = DDIMSampler(NoiseSchedule(), SamplerSettings(num_steps=steps, guidance_scale=guidance, eta=0.0))
    denoise = tf.function(lambda x, t, c: unet(x, t, c), reduce_retracing=True)  # as finetune.sampling.renderer
    latents = sampler.sample(denoise, text_encoder(tokenizer(prompts)), text_encoder(tokenizer([""])),
                             (8, 8, 4), initial_noise=noise, progress=False)
    assert relative_error(latents.transpose(0, 3, 1, 2), expected) <= TOL
    assert relative_error(np.asarray(decoder(latents)).transpose(0, 3, 1, 2), expected_images) <= TOL
    assert np.abs(expected - noise.transpose(0, 3, 1, 2)).max() > 0.1  # sampling did move the latents


@pytest.mark.parametrize("strength", [0.5, 0.8])
def test_img2img_matches_stable_diffusion_img2img_pipeline(ckpt, ours, clip_tokenizer, strength):
    """finetune.sampling.img2img on converted weights against diffusers' StableDiffusionImg2ImgPipeline
    + DDIMScheduler (SD v1's config, eta = 0): same init image, strength, noise, prompts; 1e-4 relative.

    The init latents are the VAE posterior's mean x the latent scale on both sides (the project's
    encoder on ours, diffusers' AutoencoderKL handed to the pipeline as 4-channel latents, which it
    uses as they are: by default it would sample the posterior). The noise is the pipeline's own draw,
    reproduced with the same torch generator. Same argument for the tolerance as the txt2img test."""
    import tensorflow as tf
    from diffusers import StableDiffusionImg2ImgPipeline

    from finetune.sampling import SamplerSettings
    from finetune.sampling.img2img import encode_latents, img2img_latents
    from finetune.tokens.tokenizer import ClipTokenizer

    preset, _ = ours
    pipe = StableDiffusionImg2ImgPipeline(**make_pipeline(ckpt.models, clip_tokenizer).components)
    pipe.set_progress_bar_config(disable=True)
    text_encoder, unet, encoder, decoder = (loaded(ours, ckpt, "diffusers", c)
                                            for c in ("text_encoder", "unet", "vae_encoder", "vae_decoder"))
    prompts = ["a photo of a cat", "an oil painting of a red house"]
    images = np.random.default_rng(6).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    steps, guidance = 10, 7.5
    with torch.no_grad():
        pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).astype("float32") / 127.5 - 1.0)
        init = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        expected = pipe(prompts, image=init, strength=strength, negative_prompt=[""] * 2, num_inference_steps=steps,
                        guidance_scale=guidance, eta=0.0, generator=torch.Generator().manual_seed(0),
                        output_type="latent").images.numpy()
        noise = torch.randn(tuple(init.shape), generator=torch.Generator().manual_seed(0)).numpy()

    ours_init = encode_latents(encoder, images)
    assert relative_error(ours_init.transpose(0, 3, 1, 2), init.numpy()) <= TOL
    tokenizer = ClipTokenizer()
    denoise = tf.function(lambda x, t, c: unet(x, t, c), reduce_retracing=True)
    latents = img2img_latents(denoise, SamplerSettings(num_steps=steps, guidance_scale=guidance, eta=0.0),
                              ours_init, noise.transpose(0, 2, 3, 1), [text_encoder(tokenizer(prompts))],
                              text_encoder(tokenizer([""])), strength, progress=False)
    assert relative_error(latents.transpose(0, 3, 1, 2), expected) <= TOL
    with torch.no_grad():
        expected_images = pipe.vae.decode(torch.from_numpy(expected) / preset.vae.scaling_factor).sample.numpy()
    assert relative_error(np.asarray(decoder(latents)).transpose(0, 3, 1, 2), expected_images) <= TOL
    assert np.abs(expected - init.numpy()).max() > 0.1  # denoising did move the latents
