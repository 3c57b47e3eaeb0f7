"""Stage 2: contrastive pretraining of the text encoder and the CLIP image tower.

Every step draws fresh captions for the batch's scenes (`toyworld.caption`: a random
subset of each scene's attributes in a random template), so one image is seen with many
captions. A toy-world caption often fits several images of a batch ("a red shape" fits
every red shape), so the targets are not the identity matrix: caption i is a positive for
image j whenever every attribute the caption names is true of scene j. The loss is the
symmetric InfoNCE of CLIP with those soft targets (uniform over each row's positives)
and a learned temperature.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from finetune.evaluation.judge import to_model_images
from finetune.models.clip_image import ClipImageModel, get_clip_image_spec
from finetune.models.presets import Preset
from finetune.models.text_encoder import TextEncoder
from finetune.pretraining.common import (
    batch_indices,
    data_fingerprint,
    make_optimizer,
    resume_point,
    run_steps,
    step_rng,
    watched_gradients,
)
from finetune.pretraining.config import ClipStageConfig
from finetune.tokens.tokenizer import ClipTokenizer
from finetune.toyworld import ATTRIBUTES, BACKGROUNDS, caption

_VALUE_ATTRIBUTE = {v: a for a, values in ATTRIBUTES.items() if a != "background" for v in values}


def named_values(text: str) -> dict[str, str]:
    """The attribute values a toy-world caption names: a color word right before
    "background" is the background, any other attribute word names its attribute."""
    words = text.split()
    values = {}
    for i, word in enumerate(words):
        if i + 1 < len(words) and words[i + 1] == "background" and word in BACKGROUNDS:
            values["background"] = word
        elif word in _VALUE_ATTRIBUTE:
            values[_VALUE_ATTRIBUTE[word]] = word
    return values


def positives(captions: list[str], scenes: list) -> np.ndarray:
    """[captions, scenes] float32: 1 where the caption's named values all hold for the scene."""
    named = [named_values(c) for c in captions]
    attrs = [s.attributes for s in scenes]
    return np.array([[all(a[k] == v for k, v in n.items()) for a in attrs] for n in named], dtype=np.float32)


def contrastive_loss(text_emb, image_emb, scale, targets):
    """Symmetric InfoNCE with soft targets; `targets` [texts, images] (each row and column has a positive)."""
    logits = scale * tf.matmul(text_emb, image_emb, transpose_b=True)
    t2i = targets / tf.reduce_sum(targets, axis=1, keepdims=True)
    i2t = tf.transpose(targets) / tf.reduce_sum(tf.transpose(targets), axis=1, keepdims=True)
    loss_t = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(t2i, logits))
    loss_i = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(i2t, tf.transpose(logits)))
    return 0.5 * (loss_t + loss_i)


def zero_shot_accuracy(text_encoder, clip_model, tokenizer, images: np.ndarray, scenes: list) -> dict[str, float]:
    """Zero-shot classification of each image's color, shape and background by its nearest prompt."""
    from finetune.toyworld import describe, nameable_values

    from finetune.evaluation.judge import ClipJudge

    judge = ClipJudge(text_encoder, clip_model, tokenizer)
    image_emb = judge.embed_images(images)
    out = {}
    for attribute in ("color", "shape", "background"):
        values = nameable_values(attribute)
        prompts = [describe({attribute: v}) for v in values]
        best = np.argmax(image_emb @ judge.embed_texts(prompts).T, axis=1)
        truth = [s.attributes[attribute] for s in scenes]
        known = [i for i, t in enumerate(truth) if t in values]
        out[attribute] = float(np.mean([values[best[i]] == truth[i] for i in known]))
    return out


def train_clip(
    preset: Preset,
    images: np.ndarray,
    scenes: list,
    stage_dir: str | Path,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float = ClipStageConfig.learning_rate,
    warmup_steps: int = ClipStageConfig.warmup_steps,
    weight_decay: float = ClipStageConfig.weight_decay,
    grad_clip: float | None = ClipStageConfig.grad_clip,
    seed: int = 0,
    init_seed: int = 0,
    checkpoint_every: int = ClipStageConfig.checkpoint_every,
    keep_checkpoints: int = ClipStageConfig.keep_checkpoints,
    progress: bool = True,
) -> dict:
    """Train the text encoder and the CLIP image tower on the pool (uint8 images and their scenes).

    Returns {"text_encoder", "clip_image", "run"}.
    """
    settings = {k: v for k, v in locals().items() if k not in ("images", "scenes", "stage_dir", "progress", "preset",
                                                                 "checkpoint_every", "keep_checkpoints")}
    settings.update(preset=preset.name, text_encoder=repr(preset.text_encoder), data=data_fingerprint(images))
    resume_point(Path(stage_dir), settings, steps, "clip")  # a settings mismatch fails before any work
    spec = get_clip_image_spec(preset.name)
    keras.utils.set_random_seed(init_seed)
    text_encoder = TextEncoder(preset.text_encoder)
    clip_model = ClipImageModel(spec)
    tokenizer = ClipTokenizer(max_length=preset.text_encoder.max_length, pad_id=preset.pad_id)
    table = text_encoder.token_embedding.table  # a frozen variable for textual inversion; trained here
    variables = text_encoder.trainable_variables + [table] + clip_model.trainable_variables
    optimizer = make_optimizer(learning_rate, steps, warmup_steps, weight_decay, grad_clip,
                               no_decay=("table", "logit_scale", "bias", "gamma", "beta", "position_embedding"))
    optimizer.build(variables)
    end_id = preset.end_id

    @tf.function
    def train_step(x, ids, targets):
        with tf.GradientTape() as tape:
            tape.watch(table.value)  # not a trainable variable: watch it explicitly
            text_emb = clip_model.embed_text(text_encoder(ids), ids, end_id)
            loss = contrastive_loss(text_emb, clip_model(x), clip_model.scale(), targets)
        optimizer.apply_gradients(zip(watched_gradients(tape, loss, variables), variables))
        return loss

    def step_fn(step: int) -> float:
        idx = batch_indices(len(images), batch_size, step, seed, "clip")
        rng = step_rng(seed, "clip", step)
        batch_scenes = [scenes[i] for i in idx]
        texts = [caption(s, rng) for s in batch_scenes]
        targets = positives(texts, batch_scenes)
        return train_step(tf.constant(to_model_images(images[idx])), tf.constant(tokenizer(texts)),
                          tf.constant(targets)).numpy()

    groups = {"model": text_encoder.weights + clip_model.weights, "optimizer": optimizer.variables}
    run = run_steps(Path(stage_dir), steps, step_fn, groups, settings, checkpoint_every, keep_checkpoints,
                    desc="clip", progress=progress)
    return {"text_encoder": text_encoder, "clip_image": clip_model, "tokenizer": tokenizer, "run": run}
