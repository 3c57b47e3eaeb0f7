"""Callbacks of a training run: progress bar, checkpoints + embedding snapshots, previews, logging.

Steps here are optimizer updates; with gradient accumulation one update spans several
Keras batches (micro-steps), and each callback converts.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm


class _UpdateCallback(keras.callbacks.Callback):
    """Calls `on_update(step, logs)` after every optimizer update (1-based `step`)."""

    def __init__(self, start_micro_step: int, accumulation: int):
        super().__init__()
        self.start_micro_step, self.accumulation = start_micro_step, accumulation

    def on_train_batch_end(self, batch, logs=None):
        micro = self.start_micro_step + batch + 1
        if micro % self.accumulation == 0:
            self.on_update(micro // self.accumulation, logs or {})

    def on_update(self, step: int, logs: dict) -> None:
        raise NotImplementedError


class ProgressBar(_UpdateCallback):
    def __init__(self, start_micro_step: int, accumulation: int, total_steps: int):
        super().__init__(start_micro_step, accumulation)
        self.bar = tqdm(total=total_steps, initial=start_micro_step // accumulation, desc="train", unit="step", dynamic_ncols=True)

    def on_update(self, step, logs):
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{float(logs.get('loss', np.nan)):.4f}", lr=f"{float(logs.get('lr', np.nan)):.2e}")

    def on_train_end(self, logs=None):
        self.bar.close()


class LossHistory(_UpdateCallback):
    """Per-update loss and learning rate, for metrics.json and later plots."""

    def __init__(self, start_micro_step: int, accumulation: int):
        super().__init__(start_micro_step, accumulation)
        self.steps, self.losses, self.lrs = [], [], []
        self.started = time.perf_counter()

    def on_update(self, step, logs):
        self.steps.append(step)
        self.losses.append(float(logs.get("loss", np.nan)))
        self.lrs.append(float(logs.get("lr", np.nan)))


class Every(_UpdateCallback):
    """Calls `fn(step)` every `every` updates (never when `every` <= 0)."""

    def __init__(self, start_micro_step: int, accumulation: int, every: int, fn):
        super().__init__(start_micro_step, accumulation)
        self.every, self.fn = every, fn

    def on_update(self, step, logs):
        if self.every > 0 and step % self.every == 0:
            self.fn(step)


class LoggerCallback(_UpdateCallback):
    def __init__(self, start_micro_step: int, accumulation: int, logger, every: int):
        super().__init__(start_micro_step, accumulation)
        self.logger, self.every = logger, max(every, 1)

    def on_update(self, step, logs):
        if step % self.every == 0:
            self.logger.log_scalars({"train/loss": float(logs["loss"]), "train/lr": float(logs["lr"])}, step)


def preview_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "samples" / "previews" / f"step-{step:06d}.png"
