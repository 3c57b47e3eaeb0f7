"""Pretraining stages (VAE, CLIP, UNet) and the pipeline that runs them, on a micro preset.

The micro preset has the tiny preset's structure at a fraction of its widths; the real
`tiny` shapes are checked separately. Tracing a stage's train step into a graph takes
10-25 s on 2 cores (the step itself a fraction of a second), so most tests run the steps
eagerly (`eager` fixture); the CLIP test runs its step as the compiled graph.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import keras
import numpy as np
import pytest

from finetune.models import presets
from finetune.models.clip_image import CLIP_IMAGE_SPECS, ClipImageModel, ClipImageSpec, pool_at_end_token
from finetune.models.presets import Preset, TextEncoderSpec, UNetSpec, VAESpec
from finetune.models.text_encoder import TextEncoder
from finetune.models.vae import VAEDecoder, VAEEncoder
from finetune.pretraining import pipeline
from finetune.pretraining.clip import named_values, positives, train_clip
from finetune.pretraining.common import batch_indices
from finetune.training.checkpoints import list_checkpoints
from finetune.pretraining.config import PoolConfig, PretrainConfig, PretrainEvalConfig
from finetune.pretraining.unet import encode_pool, train_unet
from finetune.pretraining.vae import fold_latent_normalization, train_vae
from finetune.toyworld import generate

MICRO = Preset(
    name="micro",
    text_encoder=TextEncoderSpec(width=16, num_layers=1, num_heads=2, max_length=24),
    unet=UNetSpec(block_channels=(16, 16), attention=(False, True), layers_per_block=0, num_heads=2,
                  context_dim=16, norm_groups=4),
    vae=VAESpec(block_channels=(4, 8, 8, 8), layers_per_block=0, norm_groups=2, scaling_factor=1.0),
    resolution=64,
)
MICRO_CLIP = ClipImageSpec(block_channels=(8, 16), norm_groups=4, embed_dim=16, text_width=16)
QUIET = {"progress": False}


@pytest.fixture(scope="module")
def pool():
    images, captions, scenes = generate(16, seed=5)
    return images, scenes


@pytest.fixture
def eager():
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.fixture
def micro(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, MICRO.name, MICRO)
    monkeypatch.setitem(CLIP_IMAGE_SPECS, MICRO.name, MICRO_CLIP)
    return MICRO


def weights_of(*models) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(w)) for m in models for w in m.weights]


def decreases(losses: list[float]) -> bool:
    return np.mean(losses[-2:]) < np.mean(losses[:2])


# ----------------------------------------------------------------------------- shapes and pieces


def test_tiny_preset_shapes():
    from finetune.models.unet import UNet

    tiny = presets.TINY
    assert tiny.resolution // tiny.vae.downsampling_factor == 8 and tiny.vae.latent_channels == 4
    assert tiny.unet.context_dim == tiny.text_encoder.width == CLIP_IMAGE_SPECS["tiny"].text_width
    count = lambda m: sum(int(np.prod(w.shape)) for w in m.weights)  # noqa: E731
    vae = count(VAEEncoder(tiny.vae)) + count(VAEDecoder(tiny.vae))
    assert 0.3e6 < vae < 1.5e6
    assert 3e6 < count(UNet(tiny.unet)) < 7e6
    clip = ClipImageModel(CLIP_IMAGE_SPECS["tiny"])
    paths = {w.path for w in clip.weights}
    assert {"clip_image/image_projection/kernel", "clip_image/text_projection/kernel", "clip_image/logit_scale"} <= paths
    assert len(paths) == len(clip.weights)  # every variable has its own name


def test_end_token_pooling_takes_the_first_end_token():
    hidden = np.arange(2 * 5 * 1, dtype="float32").reshape(2, 5, 1)
    ids = np.array([[1, 2, 9, 9, 9], [1, 9, 9, 9, 9]])
    assert keras.ops.convert_to_numpy(pool_at_end_token(hidden, ids, 9)).ravel().tolist() == [2.0, 6.0]


def test_caption_positives_follow_named_attributes(pool):
    _, scenes = pool
    s = scenes[0]
    assert named_values(f"a {s.color} {s.shape} on a {s.background} background") == {
        "color": s.color, "shape": s.shape, "background": s.background}
    p = positives(["a shape", f"a {s.color} shape"], scenes[:4])
    assert p[0].tolist() == [1, 1, 1, 1]
    assert p[1].tolist() == [float(x.color == s.color) for x in scenes[:4]]


def test_batch_order_is_epochs_of_a_permutation():
    seen = np.concatenate([batch_indices(10, 4, step, seed=0, stage="vae") for step in range(5)])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert batch_indices(10, 4, 3, 0, "vae").tolist() == batch_indices(10, 4, 3, 0, "vae").tolist()


def test_folding_the_latent_normalization_keeps_round_trips(rng):
    keras.utils.set_random_seed(0)
    encoder, decoder = VAEEncoder(presets.TINY.vae), VAEDecoder(presets.TINY.vae)
    images = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    mean_before, logvar_before = (keras.ops.convert_to_numpy(t) for t in encoder(images))
    decoded_before = keras.ops.convert_to_numpy(decoder(mean_before))
    mu, sigma = np.array([0.5, -1.0, 2.0, 0.1]), np.array([0.2, 3.0, 1.5, 0.7])
    fold_latent_normalization(encoder, decoder, mu, sigma)
    mean_after, logvar_after = (keras.ops.convert_to_numpy(t) for t in encoder(images))
    np.testing.assert_allclose(mean_after, (mean_before - mu) / sigma, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logvar_after, logvar_before - 2 * np.log(sigma), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(decoder(mean_after)), decoded_before, atol=1e-4)


# ----------------------------------------------------------------------------- stages: finite, learning, resumable


def test_vae_stage_learns_and_resumes_exactly(eager, pool, tmp_path):
    images, _ = pool
    kw = dict(steps=4, batch_size=4, learning_rate=3e-3, warmup_steps=0, stats_samples=16, checkpoint_every=2,
              keep_checkpoints=5, **QUIET)
    full = train_vae(MICRO, images[:4], tmp_path / "a", **kw)  # pool == batch: one fixed batch, reshuffled
    losses = full["run"]["losses"]
    assert len(losses) == 4 and np.all(np.isfinite(losses)) and decreases(losses)
    assert [p.name for p in list_checkpoints(tmp_path / "a")] == ["step-000002", "step-000004"]

    # A run killed after step 2 holds that checkpoint (and maybe a half-written temp folder) only.
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-000002", tmp_path / "b" / "checkpoints" / "step-000002")
    (tmp_path / "b" / "checkpoints" / ".tmp-step-000004").mkdir()
    resumed = train_vae(MICRO, images[:4], tmp_path / "b", **kw)
    assert resumed["run"]["resumed_from"] == 2 and resumed["run"]["losses"] == losses[2:]
    for a, b in zip(weights_of(full["encoder"], full["decoder"]), weights_of(resumed["encoder"], resumed["decoder"])):
        assert a.tobytes() == b.tobytes()
    assert resumed["latent_std"] == full["latent_std"]

    with pytest.raises(Exception, match="other settings"):
        train_vae(MICRO, images[:4], tmp_path / "b", **{**kw, "learning_rate": 1e-3})


def test_clip_stage_learns(micro, pool, tmp_path):
    images, scenes = pool
    run = train_clip(micro, images[:8], scenes[:8], tmp_path, steps=6, batch_size=8, learning_rate=3e-3,
                     warmup_steps=0, checkpoint_every=0, **QUIET)["run"]
    assert np.all(np.isfinite(run["losses"])) and decreases(run["losses"])


def test_unet_stage_learns_and_resumes_exactly(eager, micro, pool, tmp_path):
    images, scenes = pool
    keras.utils.set_random_seed(1)
    moments = encode_pool(VAEEncoder(micro.vae), images[:8])
    text_encoder = TextEncoder(micro.text_encoder)
    kw = dict(steps=4, batch_size=8, learning_rate=3e-3, warmup_steps=0, ema_decay=0.9, checkpoint_every=2,
              keep_checkpoints=5, **QUIET)
    full = train_unet(micro, moments, scenes[:8], text_encoder, tmp_path / "a", **kw)
    assert np.all(np.isfinite(full["run"]["losses"])) and decreases(full["run"]["losses"])

    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-000002", tmp_path / "b" / "checkpoints" / "step-000002")
    resumed = train_unet(micro, moments, scenes[:8], text_encoder, tmp_path / "b", **kw)
    assert resumed["run"]["resumed_from"] == 2 and resumed["run"]["losses"] == full["run"]["losses"][2:]
    for a, b in zip(weights_of(full["unet"]), weights_of(resumed["unet"])):  # the EMA weights
        assert a.tobytes() == b.tobytes()


# ----------------------------------------------------------------------------- the pipeline


def micro_config(tmp_path, **overrides) -> PretrainConfig:
    cfg = PretrainConfig(preset="micro", out_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "assets"),
                         progress=False, pool=PoolConfig(size=8, seed=3), eval=PretrainEvalConfig(enabled=False))
    cfg.vae = replace(cfg.vae, steps=2, batch_size=4, stats_samples=8)
    cfg.clip = replace(cfg.clip, steps=2, batch_size=4)
    cfg.unet = replace(cfg.unet, steps=2, batch_size=4)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_pipeline_runs_skips_finished_stages_and_exports(eager, micro, tmp_path):
    cfg = micro_config(tmp_path)
    lines = []
    summary = pipeline.pretrain(cfg, log_fn=lines.append)
    assert not any("skipped" in line for line in lines)
    assets = tmp_path / "assets"
    assert sorted(p.name for p in assets.iterdir()) == sorted(
        [f"{n}.safetensors" for n in pipeline.ASSET_FILES] + [pipeline.SUMMARY_FILE])
    assert summary["stages"]["vae"]["steps"] == 2 and summary["export_dtype"] == "float16"

    # Exported float16 files load back into float32 models with the stage's values (to float16 precision).
    final = pipeline.load_final(micro, cfg.out_dir, "unet", "unet")
    exported = pipeline.load_model(micro, "unet", assets / "unet.safetensors")
    for a, b in zip(weights_of(final), weights_of(exported)):
        assert b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)

    # Everything done: nothing is trained again.
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*.safetensors")}
    lines.clear()
    pipeline.pretrain(cfg, log_fn=lines.append)
    assert sum("skipped" in line for line in lines) == 3 and not any("pool:" in line for line in lines)
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*.safetensors")}

    # Only the unfinished stage runs (the UNet's last checkpoint is complete: it is just saved again).
    (tmp_path / "run" / "unet" / "final" / pipeline.DONE_FILE).unlink()
    lines.clear()
    pipeline.pretrain(cfg, log_fn=lines.append)
    assert [line.split(":")[0] for line in lines if "skipped" in line] == ["vae", "clip"]
    assert pipeline.stage_done(cfg.out_dir, "unet")


def test_pretrain_config_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from finetune.pretraining.config import register_pretrain_schema
    from tests.conftest import ROOT

    register_pretrain_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "finetune" / "pretraining" / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name="tiny", overrides=["vae.steps=7"]))
    assert isinstance(cfg, PretrainConfig) and cfg.vae.steps == 7 and cfg.preset == "tiny"
    GlobalHydra.instance().clear()


def test_default_tiny_model_config_points_at_the_package_assets():
    from finetune.config import ASSETS_DIR
    from tests.conftest import FAST, compose_train

    cfg = compose_train(*FAST[1:])
    assert cfg.model.preset == "tiny" and not cfg.model.allow_random_weights
    for name in pipeline.STAGE_FILES["vae"] + ("text_encoder", "unet"):
        assert getattr(cfg.model.weights, name) == str(ASSETS_DIR / "tiny" / f"{name}.safetensors")
    assert cfg.model.judge.clip_image == str(ASSETS_DIR / "tiny" / "clip_image.safetensors")
    assert pipeline.default_export_dir("tiny") == ASSETS_DIR / "tiny"
