"""The whole pretraining: VAE, then CLIP (text encoder + image tower), then UNet, then export.

    out_dir/
      vae/   checkpoints/step-NNNNNN/   final/{vae_encoder,vae_decoder}.safetensors + done.json
      clip/  checkpoints/...            final/{text_encoder,clip_image}.safetensors + done.json
      unet/  checkpoints/...            final/unet.safetensors + done.json
    export_dir/  text_encoder, unet, vae_encoder, vae_decoder, clip_image (.safetensors) + pretrain.json

A stage whose `final/done.json` exists is skipped (its weights are loaded where a later
stage needs them); an unfinished stage resumes from its newest checkpoint. `done.json` is
written after the stage's weight files, so it marks a complete stage.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np

from finetune.config import ASSETS_DIR
from finetune.errors import ConfigError
from finetune.io import write_bytes_atomic, write_json_atomic
from finetune.models import build_component
from finetune.models.clip_image import ClipImageModel, get_clip_image_spec
from finetune.models.presets import Preset, get_preset
from finetune.models.weights import frozen_weights, load_safetensors_weights

log = logging.getLogger(__name__)

STAGES = ("vae", "clip", "unet")
STAGE_FILES = {"vae": ("vae_encoder", "vae_decoder"), "clip": ("text_encoder", "clip_image"), "unet": ("unet",)}
ASSET_FILES = ("text_encoder", "unet", "vae_encoder", "vae_decoder", "clip_image")
DONE_FILE = "done.json"
SUMMARY_FILE = "pretrain.json"


def default_export_dir(preset_name: str) -> Path:
    return ASSETS_DIR / preset_name


def final_dir(out_dir: str | Path, stage: str) -> Path:
    return Path(out_dir) / stage / "final"


def stage_done(out_dir: str | Path, stage: str) -> bool:
    """Whether `stage` finished: its done marker and every weight file exist."""
    folder = final_dir(out_dir, stage)
    return (folder / DONE_FILE).is_file() and all((folder / f"{n}.safetensors").is_file() for n in STAGE_FILES[stage])


def build_model(preset: Preset, name: str) -> keras.Model:
    if name == "clip_image":
        return ClipImageModel(get_clip_image_spec(preset.name))
    return build_component(preset, name)


def save_weights(model: keras.Model, path: Path, dtype: str = "float32") -> Path:
    """The model's weight file (keys: variable paths), cast to `dtype`, written atomically."""
    from safetensors.numpy import save

    tensors = {w.path: np.array(keras.ops.convert_to_numpy(w), dtype=dtype, order="C") for w in frozen_weights(model)}
    return write_bytes_atomic(path, save(tensors), "weights")


def convert_weight_file(source: Path, target: Path, dtype: str) -> Path:
    """Copy a weight file with every tensor cast to `dtype` (loading casts back to the model's dtype)."""
    from safetensors.numpy import load_file, save

    tensors = {k: np.asarray(v, dtype=dtype) for k, v in load_file(str(source)).items()}
    return write_bytes_atomic(target, save(tensors), "weights")


def load_model(preset: Preset, name: str, path: str | Path) -> keras.Model:
    """Build component `name` of `preset` (any of ASSET_FILES) and load a weight file into it (float32)."""
    model = build_model(preset, name)
    load_safetensors_weights(model, path)
    return model


def load_final(preset: Preset, out_dir: str | Path, stage: str, name: str) -> keras.Model:
    return load_model(preset, name, final_dir(out_dir, stage) / f"{name}.safetensors")


def save_stage(out_dir: str | Path, stage: str, models: dict[str, keras.Model], summary: dict) -> None:
    folder = final_dir(out_dir, stage)
    for name in STAGE_FILES[stage]:
        save_weights(models[name], folder / f"{name}.safetensors")
    write_json_atomic(folder / DONE_FILE, summary)


def read_stage_summary(out_dir: str | Path, stage: str) -> dict:
    return json.loads((final_dir(out_dir, stage) / DONE_FILE).read_text())


def _loss_text(summary: dict) -> str:
    loss = summary["final_loss"]
    return "no new steps (resumed at the end)" if loss is None else f"loss {loss:.4f}"


def _stage_summary(cfg_section, run: dict, started: float, **extra) -> dict:
    losses = run["losses"]
    return {
        **asdict(cfg_section),
        "train_seconds": round(run["seconds"], 1),
        "stage_seconds_this_run": round(time.perf_counter() - started, 1),
        "resumed_from": run["resumed_from"],
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        **extra,
    }


def pretrain(cfg, log_fn=print) -> dict:
    """Run every unfinished stage of `cfg` (a PretrainConfig), export, evaluate. Returns the summary."""
    from finetune.toyworld import generate

    started_all = time.perf_counter()
    preset = get_preset(cfg.preset)
    if cfg.export_dtype not in ("float16", "float32"):
        raise ConfigError(f"export_dtype={cfg.export_dtype!r}; choose float16 or float32")
    out_dir = Path(cfg.out_dir)
    export_dir = Path(cfg.export_dir) if cfg.export_dir else default_export_dir(preset.name)
    todo = [s for s in STAGES if not stage_done(out_dir, s)]
    for stage in STAGES:
        if stage not in todo:
            log_fn(f"{stage}: done already ({final_dir(out_dir, stage)}), skipped")
    common = {"seed": cfg.seed, "init_seed": cfg.init_seed, "progress": cfg.progress}

    images = scenes = None
    if todo:
        t = time.perf_counter()
        images, _, scenes = generate(cfg.pool.size, cfg.pool.seed)
        log_fn(f"pool: {len(images)} toy-world images (seed {cfg.pool.seed}) in {time.perf_counter() - t:.0f} s")

    if "vae" in todo:
        from finetune.pretraining.vae import train_vae

        t = time.perf_counter()
        r = train_vae(preset, images, out_dir / "vae", **common, **asdict(cfg.vae))
        summary = _stage_summary(cfg.vae, r["run"], t, latent_mean=r["latent_mean"], latent_std=r["latent_std"])
        save_stage(out_dir, "vae", {"vae_encoder": r["encoder"], "vae_decoder": r["decoder"]}, summary)
        log_fn(f"vae: done in {summary['train_seconds']:.0f} s of training, {_loss_text(summary)}, "
               f"latent std before normalization {np.round(r['latent_std'], 3).tolist()}")
        del r

    if "clip" in todo:
        from finetune.pretraining.clip import train_clip, zero_shot_accuracy

        t = time.perf_counter()
        r = train_clip(preset, images, scenes, out_dir / "clip", **common, **asdict(cfg.clip))
        held_out, _, held_scenes = generate(512, cfg.pool.seed + 1)
        zero_shot = zero_shot_accuracy(r["text_encoder"], r["clip_image"], r["tokenizer"], held_out, held_scenes)
        summary = _stage_summary(cfg.clip, r["run"], t, zero_shot_accuracy=zero_shot)
        save_stage(out_dir, "clip", {"text_encoder": r["text_encoder"], "clip_image": r["clip_image"]}, summary)
        log_fn(f"clip: done in {summary['train_seconds']:.0f} s of training, {_loss_text(summary)}, "
               f"zero-shot accuracy {zero_shot}")
        del r

    if "unet" in todo:
        from finetune.pretraining.unet import encode_pool, train_unet

        t = time.perf_counter()
        encoder = load_final(preset, out_dir, "vae", "vae_encoder")
        moments = encode_pool(encoder, images)
        del encoder
        log_fn(f"unet: pool encoded to latents {moments.shape[1:]} in {time.perf_counter() - t:.0f} s")
        text_encoder = load_final(preset, out_dir, "clip", "text_encoder")
        r = train_unet(preset, moments, scenes, text_encoder, out_dir / "unet", **common, **asdict(cfg.unet))
        summary = _stage_summary(cfg.unet, r["run"], t)
        models = {"unet": r["unet"]}
        if cfg.unet.text_learning_rate > 0:  # the jointly trained text encoder replaces the CLIP stage's
            summary["text_encoder_trained_jointly"] = True
            save_weights(r["text_encoder"], final_dir(out_dir, "unet") / "text_encoder.safetensors")
        save_stage(out_dir, "unet", models, summary)
        log_fn(f"unet: done in {summary['train_seconds']:.0f} s of training, {_loss_text(summary)}")
        del r
    del images, scenes

    # Export every component, from the stage that made it (in float16 unless told otherwise).
    sources = {name: final_dir(out_dir, stage) / f"{name}.safetensors" for stage, names in STAGE_FILES.items() for name in names}
    if (final_dir(out_dir, "unet") / "text_encoder.safetensors").is_file():
        sources["text_encoder"] = final_dir(out_dir, "unet") / "text_encoder.safetensors"
    for name in ASSET_FILES:
        convert_weight_file(sources[name], export_dir / f"{name}.safetensors", cfg.export_dtype)
    sizes = {n: (export_dir / f"{n}.safetensors").stat().st_size for n in ASSET_FILES}
    summary = {
        "preset": preset.name,
        "export_dtype": cfg.export_dtype,
        "pool": asdict(cfg.pool),
        "seed": cfg.seed,
        "stages": {s: read_stage_summary(out_dir, s) for s in STAGES},
        "bytes": sizes,
        "total_megabytes": round(sum(sizes.values()) / 2**20, 2),
    }
    log_fn(f"exported {len(ASSET_FILES)} weight files ({summary['total_megabytes']} MB, {cfg.export_dtype}) to {export_dir}")

    if cfg.eval.enabled:
        summary["eval"] = evaluate_exported(preset, export_dir, cfg.eval, progress=cfg.progress, log_fn=log_fn)
    summary["wall_seconds_this_run"] = round(time.perf_counter() - started_all, 1)
    write_json_atomic(export_dir / SUMMARY_FILE, summary)
    return summary


def evaluate_exported(preset: Preset, export_dir: Path, eval_cfg, progress: bool = True, log_fn=print) -> dict:
    """Load the exported files as a user would and measure text-to-image accuracy and its VAE ceiling."""
    from finetune.pretraining.evaluate import format_report, text_to_image_accuracy, vae_round_trip_accuracy

    t = time.perf_counter()
    models = {n: load_model(preset, n, Path(export_dir) / f"{n}.safetensors") for n in ASSET_FILES if n != "clip_image"}
    t2i, _, _ = text_to_image_accuracy(
        preset, models["text_encoder"], models["unet"], models["vae_decoder"],
        samples_per_prompt=eval_cfg.samples_per_prompt, guidance_scale=eval_cfg.guidance_scale,
        num_steps=eval_cfg.num_steps, seed=eval_cfg.seed, progress=progress,
    )
    ceiling = vae_round_trip_accuracy(models["vae_encoder"], models["vae_decoder"], eval_cfg.ceiling_images)
    log_fn(format_report(t2i, ceiling))
    return {"text_to_image": t2i, "vae_ceiling": ceiling, "seconds": round(time.perf_counter() - t, 1)}
