"""Learning-rate schedules: linear warmup, then constant, linear or cosine decay to zero (`WarmupDecay`);
a run's schedule of optimizer updates with early stopping's cooldown on top (`UpdateSchedule`)."""

from __future__ import annotations

import math

import keras
from keras import ops

from finetune.errors import ConfigError

KINDS = ("constant", "linear", "cosine")
# The cooldown variable's value while no cooldown has begun: beyond any run's updates, exact in float32.
NEVER = float(2**30)


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


@keras.saving.register_keras_serializable(package="finetune")
class UpdateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(update)` for the optimizer's update `micro_step // accumulation`, times early stopping's
    cooldown: a linear decay to 0 over `cooldown_steps` updates from the update held in an optimizer
    variable (`add_cooldown_variable`; `start_cooldown` sets it while training). Until then the factor is
    exactly 1, so a run's rates are those of `schedule` bit for bit.

    Keras hands a schedule its count of micro-steps: under gradient accumulation a schedule of updates
    would run `accumulation` times too fast. The cooldown's start lives in an optimizer variable because
    the JAX step is a pure function of the optimizer's variables: a value the step reads from anywhere
    else is frozen into the compiled step."""

    def __init__(self, schedule, accumulation: int = 1, cooldown_steps: int = 0):
        self.schedule, self.accumulation, self.cooldown_steps = schedule, int(accumulation), int(cooldown_steps)
        self.cooldown_start = None

    def add_cooldown_variable(self, optimizer) -> None:
        """Create the cooldown's start as a variable of the built `optimizer` (in the strategy's scope)."""
        if self.cooldown_steps > 0 and self.cooldown_start is None:
            self.cooldown_start = optimizer.add_variable((), keras.initializers.Constant(NEVER), "float32",
                                                         name="cooldown_start")

    def start_cooldown(self, update: int) -> None:
        """Decay from optimizer update `update` (0-based: the next one after `update` updates) to 0 at
        `update + cooldown_steps`."""
        self.cooldown_start.assign(float(update))

    def __call__(self, micro_step):
        update = ops.floor_divide(ops.cast(micro_step, "float32"), float(self.accumulation))
        rate = self.schedule(update)
        if self.cooldown_start is None:
            return rate
        left = (ops.convert_to_tensor(self.cooldown_start) + self.cooldown_steps - update) / self.cooldown_steps
        return rate * ops.clip(left, 0.0, 1.0)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "accumulation": self.accumulation,
                "cooldown_steps": self.cooldown_steps}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config.pop("schedule")), **config)
