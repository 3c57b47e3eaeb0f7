"""Callbacks of a training run: history, progress bar, checkpoints + embedding snapshots, previews, tracking.

Steps here are optimizer updates; with gradient accumulation one update spans several
Keras batches (micro-steps), and each callback converts.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from finetune.io import fault_point


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


def embedding_stats(vectors: np.ndarray, initial: np.ndarray) -> tuple[list[float], list[float]]:
    """Per learned vector: its L2 norm, and its cosine similarity to the vector it started from."""
    vectors, initial = np.asarray(vectors, np.float64), np.asarray(initial, np.float64)
    norms = np.linalg.norm(vectors, axis=1)
    denominator = np.maximum(norms * np.linalg.norm(initial, axis=1), 1e-12)
    return norms.tolist(), (np.sum(vectors * initial, axis=1) / denominator).tolist()


class TrainingHistory(_UpdateCallback):
    """Per update: loss, learning rate, gradient norm, and each learned vector's norm and cosine
    similarity to its initial vector (these also at the start). For metrics.json, the trackers and
    the run's plots. `vectors()` returns the learned vectors [num_vectors, D] as they are now."""

    def __init__(self, start_micro_step: int, accumulation: int, vectors, initial_vectors: np.ndarray):
        super().__init__(start_micro_step, accumulation)
        self.vectors, self.initial_vectors = vectors, np.asarray(initial_vectors)
        self.steps, self.losses, self.lrs, self.grad_norms = [], [], [], []
        self.vector_steps, self.vector_norms, self.cosines = [], [], []  # [points][num_vectors]

    def _record_vectors(self, step: int) -> None:
        norms, cosines = embedding_stats(self.vectors(), self.initial_vectors)
        self.vector_steps.append(step)
        self.vector_norms.append(norms)
        self.cosines.append(cosines)

    def restore(self, saved: dict | None) -> None:
        """Continue the history a checkpoint saved (`as_metrics()`), so a resumed run's metrics are the
        uninterrupted run's. Anything malformed is ignored (the history then starts here)."""
        try:
            losses, vectors = saved["loss_history"], saved["embedding_history"]
            restored = ([list(losses[k]) for k in ("step", "loss", "lr", "grad_norm")],
                        [list(vectors[k]) for k in ("step", "norm", "cosine_to_init")])
        except (TypeError, KeyError):
            return
        (self.steps, self.losses, self.lrs, self.grad_norms), (self.vector_steps, self.vector_norms, self.cosines) = restored

    def on_train_begin(self, logs=None):
        start = self.start_micro_step // self.accumulation
        if not self.vector_steps or self.vector_steps[-1] != start:
            self._record_vectors(start)

    def on_update(self, step, logs):
        fault_point(f"step:{step}")
        self.steps.append(step)
        for values, key in ((self.losses, "loss"), (self.lrs, "lr"), (self.grad_norms, "grad_norm")):
            values.append(float(logs.get(key, np.nan)))
        self._record_vectors(step)

    def latest(self) -> dict[str, float]:
        """The newest update's values, keyed as the trackers log them."""
        values = {"train/loss": self.losses[-1], "train/lr": self.lrs[-1], "train/grad_norm": self.grad_norms[-1]}
        for i, (norm, cosine) in enumerate(zip(self.vector_norms[-1], self.cosines[-1])):
            values[f"embedding/norm_{i}"] = norm
            values[f"embedding/cosine_to_init_{i}"] = cosine
        return values

    def as_metrics(self) -> dict:
        return {
            "loss_history": {"step": self.steps, "loss": self.losses, "lr": self.lrs, "grad_norm": self.grad_norms},
            "embedding_history": {"step": self.vector_steps, "norm": self.vector_norms, "cosine_to_init": self.cosines},
        }


class Every(_UpdateCallback):
    """Calls `fn(step)` every `every` updates (never when `every` <= 0)."""

    def __init__(self, start_micro_step: int, accumulation: int, every: int, fn):
        super().__init__(start_micro_step, accumulation)
        self.every, self.fn = every, fn

    def on_update(self, step, logs):
        if self.every > 0 and step % self.every == 0:
            self.fn(step)


class Monitor(_UpdateCallback):
    """Every `every` updates: `measure(step)` -> {name: value}; keeps the values per step (metrics.json,
    checkpoints), logs them to `tracker` as `<prefix>/<name>`, offers them to `best` (a
    finetune.training.validation.BestEmbedding, or None; validation's as `validation_<name>`, scores as
    they are), then calls `after(monitor, step)` (early stopping's decision). List it before the
    checkpoint callback: a checkpoint of step N then holds the values of step N, and a resumed run
    continues them."""

    def __init__(self, start_micro_step: int, accumulation: int, every: int, measure, tracker, prefix: str,
                 best=None, vectors=None, after=None):
        super().__init__(start_micro_step, accumulation)
        self.every, self.measure, self.tracker, self.prefix = every, measure, tracker, prefix
        self.best, self.vectors, self.after = best, vectors, after
        self.steps: list[int] = []
        self.values: dict[str, list] = {}
        self.seconds = 0.0  # spent measuring, this process (metrics.json: what watching the run cost)

    def record(self, step: int, values: dict) -> None:
        for name in values.keys() - self.values.keys():  # a value first seen now: None at the earlier steps
            self.values[name] = [None] * len(self.steps)
        for name, column in self.values.items():
            column.append(values.get(name))
        self.steps.append(step)

    def on_update(self, step, logs):
        if self.every > 0 and step % self.every == 0:
            self.measure_at(step)

    def measure_at(self, step: int) -> None:
        """Measure now (also outside a fit: the final step of a run that stopped between two measurements)."""
        started = time.perf_counter()
        values = self.measure(step)
        self.seconds += time.perf_counter() - started
        if values is None:
            return
        self.record(step, values)
        self.tracker.log_scalars({f"{self.prefix}/{k}": v for k, v in values.items() if v is not None}, step)
        if self.best is not None:
            named = {f"{self.prefix}_{k}" if self.prefix == "validation" else k: v for k, v in values.items()}
            self.best.offer(step, named, self.vectors)
        if self.after is not None:
            self.after(self, step)

    def as_metrics(self) -> dict:
        return {"step": list(self.steps), **{k: list(v) for k, v in self.values.items()}}

    def restore(self, saved: dict | None) -> None:
        """Continue a history `as_metrics()` saved; anything malformed is ignored (it then starts here)."""
        try:
            steps = [int(s) for s in saved["step"]]
            values = {k: list(v) for k, v in saved.items() if k != "step"}
        except (TypeError, KeyError, ValueError):
            return
        if all(len(v) == len(steps) for v in values.values()):
            self.steps, self.values = steps, values


class Cooldown(_UpdateCallback):
    """How an early-stopped run ends: `begin(step)` (the update after which the stop criterion held)
    starts the learning rate's linear decay to 0 over `schedule.cooldown_steps` updates
    (`schedule.start_cooldown`, a finetune.training.schedules.UpdateSchedule), and the fit stops after
    update `step + steps` (`stop_step`); 0 steps stop it at once. `sync()` first hands a JAX fit's state
    to the variables, so that its next step reads the variable `begin` sets."""

    def __init__(self, start_micro_step: int, accumulation: int, schedule, sync):
        super().__init__(start_micro_step, accumulation)
        self.steps, self.schedule, self.sync = schedule.cooldown_steps, schedule, sync
        self.began: int | None = None
        self.stop_step: int | None = None

    def begin(self, step: int, now: int | None = None) -> None:
        """The criterion held after update `step`; `now`: the update the run is at (a resumed run: its
        checkpoint's, where the cooldown may be over already). Default: `step`."""
        self.began = step
        if self.steps:
            self.sync()
            self.schedule.start_cooldown(step)
        self.on_update(step if now is None else now, {})

    def done_at(self, step: int) -> bool:
        return self.began is not None and step >= self.began + self.steps

    def on_update(self, step, logs):
        if self.done_at(step) and self.stop_step is None:
            self.stop_step = step
            if getattr(self, "model", None) is not None:
                self.model.stop_training = True


class LoggerCallback(_UpdateCallback):
    """Hands the newest values of a TrainingHistory (listed before it) to a tracker every `every` updates."""

    def __init__(self, start_micro_step: int, accumulation: int, tracker, history: TrainingHistory, every: int):
        super().__init__(start_micro_step, accumulation)
        self.tracker, self.history, self.every = tracker, history, max(every, 1)

    def on_update(self, step, logs):
        if step % self.every == 0:
            self.tracker.log_scalars(self.history.latest(), step)


def preview_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "samples" / "previews" / f"step-{step:06d}.png"
