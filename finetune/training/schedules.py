"""Learning-rate schedules: linear warmup, then constant, linear or cosine decay to zero."""

from __future__ import annotations

import math

import keras
from keras import ops

from finetune.errors import ConfigError

KINDS = ("constant", "linear", "cosine")


@keras.saving.register_keras_serializable(package="finetune")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) for optimizer update `step` (0-based) of `total_steps`."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, kind: str = "constant"):
        if kind not in KINDS:
            raise ConfigError(f"trainer.lr_schedule={kind!r}; choose one of {list(KINDS)}")
        if warmup_steps < 0 or warmup_steps > total_steps:
            raise ConfigError(f"trainer.warmup_steps={warmup_steps} must be between 0 and trainer.max_steps={total_steps}")
        self.peak, self.total_steps, self.warmup_steps, self.kind = float(peak), int(total_steps), int(warmup_steps), kind

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.peak * ops.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        if self.kind == "constant":
            decayed = self.peak * ops.ones_like(progress)
        elif self.kind == "linear":
            decayed = self.peak * (1.0 - progress)
        else:
            decayed = self.peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "kind": self.kind}
