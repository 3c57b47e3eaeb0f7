"""One textual-inversion run, start to finish, as a plain function of a typed config.

    check inputs -> tokenizer + placeholder -> concept dataset -> latents cached with the
    frozen VAE encoder (then freed) -> text encoder + UNet -> fit (checkpoints, previews)
    -> learned_embeds.safetensors -> evaluation renders -> metrics.json
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np
from omegaconf import OmegaConf

from finetune.assembly import (
    build_renderer, check_resolution, initializer_ids, load_component, make_tokenizer,
    require_weights, resolve_model,
)
from finetune.backends import compiled_call, enable_determinism
from finetune.data.pipeline import load_concept, training_dataset
from finetune.data.templates import load_templates, with_context
from finetune.errors import ConfigError
from finetune.evaluation.grid import make_grid, save_png_atomic
from finetune.evaluation.stage import render_eval_prompts, sampler_settings, score_rendered
from finetune.export.diffusers_format import DEFAULT_FILENAME, save_diffusers_embedding
from finetune.export.formats import check_formats, export_embedding
from finetune.io import fault_point, lock_run_folder, write_json_atomic
from finetune.reporting import write_run_report
from finetune.sampling.renderer import expand_prompt
from finetune.tracking import Tracker, make_tracker
from finetune.training import callbacks as cb
from finetune.training.build import build_tuner
from finetune.training.checkpoints import (
    find_resume_checkpoint, remove_stale_temp_files, restore_checkpoint, save_checkpoint,
)
from finetune.training.distribute import make_strategy, worker_index
from finetune.training.validation import BestEmbedding, ValidationLoss, dvar_ratio, should_stop, training_scores
from finetune.validation import validate_train_config

log = logging.getLogger(__name__)


def fingerprint(cfg) -> str:
    """Hash of everything that decides the learned vectors (not max_steps, resume or eval)."""
    keep = {k: OmegaConf.to_container(OmegaConf.structured(getattr(cfg, k))) for k in ("model", "data", "token")}
    trainer = OmegaConf.to_container(OmegaConf.structured(cfg.trainer))
    # When to stop and what to watch: not what a step learns.
    for k in ("max_steps", "resume", "checkpoint_every", "keep_checkpoints", "strategy", "gradient_checkpointing",
              "validation", "early_stopping", "early_stopping_window", "early_stopping_threshold",
              "early_stopping_patience", "early_stopping_cooldown"):
        trainer.pop(k)
    blob = json.dumps({**keep, "trainer": trainer, "seed": cfg.seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_scorer(cfg, preset, renderer, tuner):
    """`score(step)` -> {clip_i, clip_t, attribute_score, edit_score} (what the judge and the concept allow)
    of `eval.score_images` seeds of each eval prompt; None when there is nothing to render or score with."""
    from finetune.evaluation.judge import load_judge
    from finetune.evaluation.scores import concept_attributes
    from finetune.evaluation.stage import reference_images

    if renderer is None or not cfg.eval.prompts:
        return None
    concept_dir = cfg.eval.reference_dir or cfg.data.concept_dir
    judge, target = load_judge(cfg.model.judge, preset), concept_attributes(concept_dir)
    if judge is None and target is None:
        if cfg.eval.best_by != "validation_loss":
            raise ConfigError(f"eval.best_by={cfg.eval.best_by}: nothing scores the renders (model.judge is not set "
                              f"and {concept_dir} has no concept.json); set model.judge or eval.best_by=validation_loss")
        return None
    if cfg.eval.best_by in ("clip_i", "clip_t") and judge is None:
        raise ConfigError(f"eval.best_by={cfg.eval.best_by} needs a CLIP judge: model.judge is not set")
    if cfg.eval.best_by in ("attribute_score", "edit_score") and target is None:
        raise ConfigError(f"eval.best_by={cfg.eval.best_by} needs a toy-world concept: {concept_dir} has no "
                          "concept.json with toyworld_attributes")
    reference = reference_images(concept_dir, cfg.data.resolution) if judge is not None else None
    prompts = [expand_prompt(p, cfg.token.placeholder) for p in cfg.eval.prompts]

    def score(step: int) -> dict:
        tuner.sync_variables()
        rendered = renderer.render(prompts, sampler_settings(cfg.eval), cfg.eval.score_images, cfg.eval.negative_prompt,
                                   progress=False)
        return training_scores(np.stack([r.image for r in rendered]), [r.prompt for r in rendered],
                               cfg.token.placeholder, judge=judge, reference=reference, target=target)

    return score


def encode_latents(vae_encoder, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Posterior moments [M, h, w, 2C] (mean | logvar) of every image variant, computed once."""
    encode = compiled_call(vae_encoder)
    return np.concatenate([
        np.concatenate([keras.ops.convert_to_numpy(m) for m in encode(images[i : i + batch_size])], axis=-1)
        for i in range(0, len(images), batch_size)
    ])


def train(cfg, run_dir: str | Path, extra_callbacks: list | None = None) -> dict:
    """Run textual inversion as `cfg` (a TrainConfig) says; outputs go to `run_dir`. Returns the metrics.

    `extra_callbacks` are Keras callbacks added to the fit (e.g. to watch or stop a run).
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    validate_train_config(cfg)  # every key's range, before any work
    source = resolve_model(cfg.model)
    preset = source.preset
    check_resolution(source.preset, cfg.data.resolution)
    check_formats(cfg.export.formats, cfg.token.placeholder)  # before hours of training, not after
    require_weights(source, ["text_encoder", "unet", "vae_encoder"] + (["vae_decoder"] if cfg.eval.enabled else []))
    # Before any TensorFlow op: MultiWorkerMirroredStrategy configures collective ops at startup.
    strategy = make_strategy(cfg.trainer.strategy)
    worker = worker_index(strategy)
    if worker:  # every worker trains the same vectors; only the chief's outputs land in the run folder
        run_dir = run_dir / f"worker-{worker}"
        log.info("multi-worker task %d: outputs in %s, no tracking", worker, run_dir)
    lock_run_folder(run_dir)  # a second run into this folder is one error line, not a silent clobber
    remove_stale_temp_files(run_dir)
    enable_determinism()

    tokenizer, placeholder_ids = make_tokenizer(cfg.token.placeholder, cfg.token.num_vectors,
                                                preset.text_encoder.max_length, cfg.token.truncate_long_prompts)
    init_ids = initializer_ids(tokenizer, cfg.token.initializer)
    examples = load_concept(
        cfg.data.concept_dir, cfg.token.placeholder, with_context(load_templates(cfg.data.templates), cfg.data.context),
        cfg.data.resolution,
        crop=cfg.data.crop, flip=cfg.data.flip, crops_per_image=cfg.data.crops_per_image, repeats=cfg.data.repeats,
        seed=cfg.seed, data_dir=cfg.data.data_dir or run_dir / "tfds",
    )
    caption_tokens = tokenizer(examples.captions)
    log.info("concept: %d images, %d variants, %d captions", examples.num_sources, examples.num_variants, len(examples.captions))

    fault_point("dataset")
    vae_encoder = load_component(source, "vae_encoder")
    moments = encode_latents(vae_encoder, examples.images, cfg.trainer.encode_batch_size)
    fault_point("latents")
    del vae_encoder
    gc.collect()

    tuner, initial_vectors = build_tuner(cfg, source, moments, caption_tokens, init_ids, strategy)
    text_encoder, unet = tuner.text_encoder, tuner.unet

    accumulation = cfg.trainer.gradient_accumulation_steps
    run_fingerprint = fingerprint(cfg)
    start_step = 0
    # The cooldown's start is in the checkpoint's meta (early_stopping_decided_at), not here: a run may
    # resume with early stopping switched on or off.
    optimizer_state = [v for v in tuner.optimizer.variables if v is not tuner.schedule.cooldown_start]
    checkpoint_groups = {"learned_vectors": [tuner.learned_vectors], "optimizer": optimizer_state}
    resume_from = find_resume_checkpoint(cfg.trainer.resume, run_dir, run_fingerprint)
    resumed_meta = {}
    if resume_from is not None:
        resumed_meta = restore_checkpoint(resume_from, checkpoint_groups)
        start_step = resumed_meta["step"]
        remove_stale_temp_files(resume_from.parent.parent)  # what the interrupted run left half-written
        log.info("resumed from %s at step %d", resume_from, start_step)
    start_micro = start_step * accumulation
    tuner.step_counter.assign(start_micro)

    metadata = {
        "placeholder": cfg.token.placeholder, "preset": preset.name, "initializer": str(cfg.token.initializer),
        "num_vectors": str(cfg.token.num_vectors), "placeholder_ids": json.dumps(placeholder_ids),
        "resolution": str(cfg.data.resolution),
    }

    logger = Tracker() if worker else make_tracker(cfg, run_dir)

    vectors = tuner.current_vectors

    def save(step: int) -> None:
        tuner.sync_variables()  # the optimizer's state too
        save_checkpoint(run_dir, step, checkpoint_groups,
                        {"fingerprint": run_fingerprint, "seed": cfg.seed, "history": history.as_metrics(),
                         "validation_history": validation.as_metrics(), "score_history": scoring.as_metrics(),
                         "best": best.state(), "early_stopping_decided_at": cooldown.began},
                        keep=cfg.trainer.keep_checkpoints)
        save_snapshot(step)

    def save_snapshot(step: int) -> None:
        snapshot = run_dir / f"learned_embeds-steps-{step}.safetensors"
        save_diffusers_embedding(snapshot, cfg.token.placeholder, vectors(), {**metadata, "steps": str(step)})
        logger.log_embedding(snapshot, step, metadata)

    renderer = build_renderer(source, tokenizer, text_encoder, unet, cfg.data.resolution) if cfg.eval.enabled else None
    preview_prompt = expand_prompt(cfg.eval.prompts[0], cfg.token.placeholder) if cfg.eval.prompts else None

    def preview(step: int) -> None:
        if renderer is None or preview_prompt is None:
            return
        tuner.sync_variables()
        image = renderer.render([preview_prompt], sampler_settings(cfg.eval), 1, cfg.eval.negative_prompt, progress=False)[0]
        save_png_atomic(make_grid([image.image], [f"step {step}: {image.label}"]), cb.preview_path(run_dir, step))
        logger.log_preview(image, step)

    history = cb.TrainingHistory(start_micro, accumulation, vectors, initial_vectors)
    history.restore(resumed_meta.get("history"))  # a resumed run's metrics cover every step
    if start_step and not (run_dir / f"learned_embeds-steps-{start_step}.safetensors").is_file():
        save_snapshot(start_step)  # killed between the checkpoint and its snapshot

    # What the run watches: the validation loss (and DVAR early stopping on it), quality scores, the best vectors.
    t = cfg.trainer
    validation_loss = (ValidationLoss(tuner, cfg.seed, len(moments), len(caption_tokens),
                                      t.validation.batch_size) if t.validation.every > 0 else None)

    def validate(step: int) -> dict:
        loss = validation_loss()
        return {"loss": loss, "dvar_ratio": dvar_ratio([*validation.values.get("loss", []), loss],
                                                       t.early_stopping_window)}

    # Early stopping: once DVAR's criterion holds, the cooldown's updates, then the end of the fit.
    cooldown = cb.Cooldown(start_micro, accumulation, tuner.schedule, tuner.sync_variables)
    if t.early_stopping and resumed_meta.get("early_stopping_decided_at") is not None:
        cooldown.begin(int(resumed_meta["early_stopping_decided_at"]), now=start_step)  # done if it ended there

    def decide(monitor, step: int) -> None:
        if t.early_stopping and cooldown.began is None and should_stop(
                monitor.values["loss"], t.early_stopping_window, t.early_stopping_threshold, t.early_stopping_patience):
            cooldown.begin(step)

    best_path = run_dir / "learned_embeds-best.safetensors"

    def save_best(step: int, best_vectors: np.ndarray) -> None:
        save_diffusers_embedding(best_path, cfg.token.placeholder, best_vectors,
                                 {**metadata, "steps": str(step), "best_by": cfg.eval.best_by})
        logger.log_embedding(best_path, step, {**metadata, "best_by": cfg.eval.best_by}, best=True)

    best = BestEmbedding(cfg.eval.best_by, save_best)
    best.restore(resumed_meta.get("best"))
    if best.vectors is not None and not best_path.is_file():  # resumed into a new folder
        save_best(best.step, best.vectors)
    validation = cb.Monitor(start_micro, accumulation, t.validation.every if validation_loss else 0, validate, logger,
                            "validation", best=best, vectors=vectors, after=decide)
    validation.restore(resumed_meta.get("validation_history"))

    scorer = make_scorer(cfg, preset, renderer, tuner) if cfg.eval.score_every > 0 else None
    scoring = cb.Monitor(start_micro, accumulation, cfg.eval.score_every if scorer else 0, scorer, logger, "score",
                         best=best, vectors=vectors)
    scoring.restore(resumed_meta.get("score_history"))

    callbacks = [
        history,
        validation,  # before the checkpoint: a checkpoint of step N holds the values of step N
        cooldown,
        scoring,
        cb.ProgressBar(start_micro, accumulation, cfg.trainer.max_steps),
        cb.Every(start_micro, accumulation, cfg.trainer.checkpoint_every, save),
        cb.Every(start_micro, accumulation, cfg.eval.preview_every, preview),
        cb.LoggerCallback(start_micro, accumulation, logger, history, cfg.logger.log_every),
        *(extra_callbacks or []),
    ]
    remaining = cfg.trainer.max_steps * accumulation - start_micro
    train_started = time.perf_counter()
    if remaining > 0 and cooldown.stop_step is None:
        dataset = training_dataset(examples, cfg.trainer.batch_size, cfg.seed).skip(start_micro)
        with strategy.scope():
            tuner.fit(dataset, epochs=1, steps_per_epoch=remaining, callbacks=callbacks, verbose=0, shuffle=False)
    final_step = history.steps[-1] if history.steps else start_step
    stopped_early = cooldown.stop_step is not None
    for monitor in (validation, scoring):  # the final vectors are always measured (a stop falls between two)
        if monitor.every > 0 and final_step > 0 and final_step not in monitor.steps:  # resumed at the end too
            monitor.measure_at(final_step)
    train_seconds = time.perf_counter() - train_started

    final = vectors()
    if not np.all(np.isfinite(final)):
        raise ConfigError("training diverged (learned vectors are not finite); lower trainer.learning_rate")
    save_diffusers_embedding(run_dir / DEFAULT_FILENAME, cfg.token.placeholder, final,
                             {**metadata, "steps": str(final_step)})
    exported = export_embedding(run_dir / "export", cfg.token.placeholder, final,
                                {**metadata, "steps": str(final_step)},
                                [f for f in cfg.export.formats if f != "diffusers"])  # diffusers: the file above
    logger.log_embedding(run_dir / DEFAULT_FILENAME, final_step, metadata, final=True, exported=exported)

    sampling = quality = None
    if renderer is not None and cfg.eval.prompts:
        rendered = render_eval_prompts(renderer, cfg.eval, cfg.token.placeholder, run_dir / "samples")
        quality = score_rendered(rendered, cfg.token.placeholder, cfg.model.judge, preset,
                                 cfg.eval.reference_dir or cfg.data.concept_dir, cfg.data.resolution)
        sampling = {k: getattr(cfg.eval, k) for k in ("num_steps", "guidance_scale", "eta", "seed", "images_per_prompt", "negative_prompt")}
        sampling["prompts"] = [expand_prompt(p, cfg.token.placeholder) for p in cfg.eval.prompts]

    metrics = {
        "final_loss": history.losses[-1] if history.losses else None,
        "mean_loss_last_10": float(np.mean(history.losses[-10:])) if history.losses else None,
        "steps": final_step,
        "max_steps": cfg.trainer.max_steps,
        "stop_reason": "early_stopping" if stopped_early else "max_steps",
        # the update after which DVAR's criterion held; the cooldown's updates followed it (None: never held)
        "early_stopping_decided_at": cooldown.began,
        "resumed_from_step": start_step,
        "replicas": strategy.num_replicas_in_sync,
        "train_seconds": round(train_seconds, 3),
        "validation_seconds": round(validation.seconds, 3),  # of train_seconds: the validation loss (this process)
        "score_seconds": round(scoring.seconds, 3),  # of train_seconds: rendering and scoring during training
        "wall_seconds": round(time.perf_counter() - started, 3),
        "learned_vector_norms": [float(n) for n in np.linalg.norm(final, axis=1)],
        "initial_vector_norms": [float(n) for n in np.linalg.norm(initial_vectors, axis=1)],
        "vocabulary_mean_norm": float(np.linalg.norm(keras.ops.convert_to_numpy(text_encoder.token_embedding.table),
                                                     axis=1).mean()),
        **history.as_metrics(),
        "validation_history": validation.as_metrics(),
        "score_history": scoring.as_metrics(),
        "best": {**best.as_metrics(), "file": best_path.name} if best.step is not None else None,
        "sampling": sampling,
        "quality": quality,
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    logger.finish(metrics, write_run_report(run_dir, metrics, cfg))
    return metrics
