"""The sd_v1 preset against keras-cv 0.9.0's own classes, given the same random weights.

Each keras-cv model is built with random weights, saved in the legacy Keras .h5 format
its published files use (Keras' own legacy writer), and loaded into the project's model
through `finetune.models.weights.load_weights`, the code path users' files take.
"""

import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from finetune.models.presets import SD_V1
from finetune.models.text_encoder import TextEncoder
from finetune.models.unet import UNet
from finetune.models.vae import VAEDecoder, VAEEncoder
from finetune.models.weights import load_weights

pytestmark = pytest.mark.slow
kcv_sd = pytest.importorskip("keras_cv.models.stable_diffusion")
RES = 128
TOL = 1e-4


def save_legacy_h5(model, path):
    import h5py

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def randomize(model, seed):
    """Perturb every weight so norms' gammas/betas and biases are not trivially 1/0."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        value = np.asarray(w.numpy())
        scale = 0.02 if value.ndim > 1 else 0.1
        w.assign(value + rng.normal(0.0, scale, value.shape).astype(value.dtype))


def kcv_timestep_embedding(t, dim=320, max_period=10000):
    # keras-cv computes this outside its DiffusionModel (StableDiffusionBase._get_timestep_embedding)
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusionBase

    return StableDiffusionBase._get_timestep_embedding(None, t, 1, dim, max_period)


def ported(kcv_model, ours, tmp_path, key):
    randomize(kcv_model, seed=len(key))
    load_weights(ours, save_legacy_h5(kcv_model, tmp_path / f"{key}.h5"), f"model.weights.{key}")
    return ours


def test_text_encoder_matches_keras_cv(tmp_path):
    kcv = kcv_sd.TextEncoder(77, download_weights=False)
    ours = ported(kcv, TextEncoder(SD_V1.text_encoder), tmp_path, "text_encoder")
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 49408, (2, 77)).astype("int32")
    positions = np.tile(np.arange(77, dtype="int32"), (2, 1))
    expected = np.asarray(kcv.predict_on_batch([tokens, positions]))
    got = np.asarray(ours(tokens))
    assert np.abs(got - expected).max() <= TOL
    assert np.abs(expected).max() > 0.5  # not a trivially zero comparison


def test_unet_matches_keras_cv(tmp_path):
    kcv = kcv_sd.DiffusionModel(RES, RES, 77, download_weights=False)
    ours = ported(kcv, UNet(SD_V1.unet), tmp_path, "unet")
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((1, RES // 8, RES // 8, 4)).astype("float32")
    context = rng.standard_normal((1, 77, 768)).astype("float32")
    for t in (1, 981):
        expected = np.asarray(kcv.predict_on_batch([latent, np.asarray(kcv_timestep_embedding(t)), context]))
        got = np.asarray(ours(latent, np.array([t]), context))
        assert np.abs(got - expected).max() <= TOL, t
        assert np.abs(expected).std() > 0.01


def test_vae_encoder_mean_matches_keras_cv(tmp_path):
    kcv = kcv_sd.ImageEncoder(download_weights=False)
    ours = ported(kcv, VAEEncoder(SD_V1.vae), tmp_path, "vae_encoder")
    images = np.random.default_rng(2).uniform(-1, 1, (1, RES, RES, 3)).astype("float32")
    expected = np.asarray(kcv.predict_on_batch(images))  # keras-cv returns the scaled mean
    mean, logvar = ours(images)
    assert np.abs(np.asarray(mean) * SD_V1.vae.scaling_factor - expected).max() <= TOL
    assert np.abs(expected).std() > 1e-3
    assert logvar.shape == mean.shape


def test_vae_decoder_matches_keras_cv(tmp_path):
    kcv = kcv_sd.Decoder(RES, RES, download_weights=False)
    ours = ported(kcv, VAEDecoder(SD_V1.vae), tmp_path, "vae_decoder")
    latents = np.random.default_rng(3).standard_normal((1, RES // 8, RES // 8, 4)).astype("float32")
    expected = np.asarray(kcv.predict_on_batch(latents))
    got = np.asarray(ours(latents))
    assert got.shape == (1, RES, RES, 3)
    assert np.abs(got - expected).max() <= TOL
    assert np.abs(expected).std() > 1e-3
