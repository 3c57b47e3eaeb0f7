"""What the three pretraining stages share: data order, optimizer, EMA, checkpoints, the step loop.

Determinism: every random draw of step `s` of a stage comes from a NumPy generator seeded
with (seed, stage, s) and the data order is a permutation per epoch seeded with
(seed, stage, epoch), so the "data RNG position" of a run is just its step counter. A
resumed run therefore draws exactly what the uninterrupted run would have drawn.

A stage's folder holds `checkpoints/step-NNNNNN/` (`state.safetensors` with every model,
optimizer and EMA variable, and `meta.json` with the step and the settings fingerprint),
each written into a temporary folder and renamed into place, so a killed run leaves
whole checkpoints only. `run_steps` resumes from the newest one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from finetune.errors import ConfigError
from finetune.training.checkpoints import list_checkpoints, read_meta, restore_checkpoint, save_checkpoint
from finetune.training.schedules import WarmupDecay

STAGE_STREAMS = {"vae": 1, "clip": 2, "unet": 3}


# ----------------------------------------------------------------------------- randomness and data order


def step_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    """The generator of every random draw of `step` of `stage` (other than the data order)."""
    return np.random.default_rng([int(seed), STAGE_STREAMS[stage], 0, int(step)])


def batch_indices(pool_size: int, batch_size: int, step: int, seed: int, stage: str) -> np.ndarray:
    """Indices into the pool for `step`: epochs of a shuffled pool, each shuffle seeded by its epoch."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epochs = positions // pool_size
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([int(seed), STAGE_STREAMS[stage], 1, int(epoch)]).permutation(pool_size)
        mask = epochs == epoch
        out[mask] = order[positions[mask] % pool_size]
    return out


# ----------------------------------------------------------------------------- optimization


def make_optimizer(
    learning_rate: float, total_steps: int, warmup_steps: int, weight_decay: float = 0.0,
    clipnorm: float | None = None, no_decay: tuple[str, ...] = (),
) -> keras.optimizers.AdamW:
    """AdamW with linear warmup then cosine decay to 0; variables named in `no_decay` are not decayed."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=WarmupDecay(learning_rate, total_steps, min(warmup_steps, total_steps), "cosine"),
        weight_decay=weight_decay,
        global_clipnorm=clipnorm,
    )
    if no_decay:
        optimizer.exclude_from_weight_decay(var_names=list(no_decay))
    return optimizer


def watched_gradients(tape: tf.GradientTape, loss, variables: list):
    """Gradients of `loss` for `variables` as dense tensors (embedding lookups give sparse ones)."""
    grads = tape.gradient(loss, variables)
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]


class EMA:
    """Exponential moving average of variables, with the usual warmup:
    decay_t = min(decay, (1 + t) / (10 + t)), so early averages are not stuck at the initial weights."""

    def __init__(self, variables: list, decay: float):
        self.variables = list(variables)
        self.decay = float(decay)
        self.shadow = [
            keras.Variable(keras.ops.convert_to_numpy(v), trainable=False, name=f"ema_{i:04d}")
            for i, v in enumerate(self.variables)
        ]

    def decay_at(self, step) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        return tf.minimum(self.decay, (1.0 + step) / (10.0 + step))

    def update(self, step) -> None:
        """Call inside the train step, after the optimizer update of `step` (0-based)."""
        d = self.decay_at(step)
        for avg, var in zip(self.shadow, self.variables):
            avg.assign(d * avg + (1.0 - d) * tf.convert_to_tensor(var))

    def copy_to_model(self) -> None:
        for avg, var in zip(self.shadow, self.variables):
            var.assign(avg)


# ----------------------------------------------------------------------------- checkpoints


def data_fingerprint(array_or_items) -> str:
    """A short hash of a stage's training data (an array, or a list of items with stable reprs)."""
    h = hashlib.sha1()
    if isinstance(array_or_items, np.ndarray):
        h.update(str(array_or_items.shape).encode())
        h.update(np.ascontiguousarray(array_or_items).data)
    else:
        for item in array_or_items:
            h.update(repr(item).encode())
    return h.hexdigest()[:16]


def fingerprint(settings: dict) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the loop


def resume_point(stage_dir: Path, settings: dict, total_steps: int, name: str = "") -> Path | None:
    """The newest checkpoint of `stage_dir`, after checking it was made with `settings` (None: start afresh).

    Stages call this before building anything, so a mismatch fails at once."""
    found = list_checkpoints(stage_dir)
    if not found:
        return None
    name = name or Path(stage_dir).name
    meta = read_meta(found[-1])
    key = fingerprint(settings)
    if meta.get("fingerprint") != key:
        raise ConfigError(
            f"{name}: the checkpoints in {Path(stage_dir) / 'checkpoints'} were made with other settings "
            f"(fingerprint {meta.get('fingerprint')} != {key}); delete that folder or choose another output folder"
        )
    if meta["step"] > total_steps:
        raise ConfigError(f"{name}: checkpoint at step {meta['step']} is past steps={total_steps}")
    return found[-1]


def run_steps(
    stage_dir: Path,
    total_steps: int,
    step_fn: Callable[[int], float],
    groups: dict[str, list],
    settings: dict,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 2,
    desc: str = "",
    progress: bool = True,
) -> dict:
    """Run `step_fn(step)` (returns the step's loss) for steps [resume point, total_steps).

    Resumes from the newest checkpoint in `stage_dir` (its settings fingerprint must match
    `settings`), checkpoints every `checkpoint_every` steps and after the last one.
    Returns {"losses": this process's losses, "resumed_from": step, "seconds": wall time of the steps}.
    """
    if total_steps < 1:
        raise ConfigError(f"{desc or 'stage'}: steps={total_steps} must be >= 1")
    stage_dir = Path(stage_dir)
    print_name = desc or stage_dir.name
    key = fingerprint(settings)
    start = 0
    previous_seconds = 0.0
    found = resume_point(stage_dir, settings, total_steps, print_name)
    if found is not None:
        meta = restore_checkpoint(found, groups)
        start, previous_seconds = int(meta["step"]), float(meta.get("seconds", 0.0))

    def checkpoint(done: int, seconds: float) -> None:
        meta = {"fingerprint": key, "settings": settings, "seconds": seconds, "data_position": done}
        save_checkpoint(stage_dir, done, groups, meta, keep=keep_checkpoints)

    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc=print_name, disable=not progress,
               dynamic_ncols=True, mininterval=2.0)
    for step in bar:
        loss = float(step_fn(step))
        if not math.isfinite(loss):
            raise FloatingPointError(f"{print_name}: loss is {loss} at step {step}")
        losses.append(loss)
        if len(losses) % 10 == 0 or step == total_steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        done = step + 1
        if checkpoint_every and done % checkpoint_every == 0 and done < total_steps:
            checkpoint(done, previous_seconds + time.perf_counter() - started)
    bar.close()
    seconds = previous_seconds + time.perf_counter() - started
    if start < total_steps or found is None:
        checkpoint(total_steps, seconds)
    return {"losses": losses, "resumed_from": start, "seconds": seconds}
