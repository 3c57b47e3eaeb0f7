"""Every config value checked before any work starts: unknown keys, numeric ranges, choices, prompts.

`validate_train_config(cfg)` / `validate_evaluate_config(cfg)` take the typed config
(`finetune.config.TrainConfig` / `EvaluateConfig`) and raise one `ConfigError` naming the key,
its value and the accepted range. They run at the start of `train()` / the evaluate entry point,
before the dataset, the models or any training: a bad value never costs a training run.
Checks that need the model (resolution against the preset, placeholder against the vocabulary)
stay where the model is known (`finetune.assembly`).
"""

from __future__ import annotations

import dataclasses
import math
import re

from finetune.errors import ConfigError

INF = math.inf
# key -> (low, high, low inclusive, high inclusive); None values are allowed where the schema says Optional.
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "seed": (0, 2**31 - 1, True, True),
    "model.init_seed": (0, 2**31 - 1, True, True),
    "data.resolution": (8, 4096, True, True),
    "data.crops_per_image": (1, 1000, True, True),
    "data.repeats": (1, 10_000, True, True),
    "token.num_vectors": (1, 75, True, True),  # CLIP's 77 tokens minus start and end
    "trainer.max_steps": (1, 10_000_000, True, True),
    "trainer.batch_size": (1, 4096, True, True),
    "trainer.learning_rate": (0, 10, False, True),
    "trainer.warmup_steps": (0, 10_000_000, True, True),
    "trainer.weight_decay": (0, 1, True, True),
    "trainer.adam_beta1": (0, 1, True, False),
    "trainer.adam_beta2": (0, 1, True, False),
    "trainer.adam_epsilon": (0, 1, False, True),
    "trainer.gradient_accumulation_steps": (1, 4096, True, True),
    "trainer.max_grad_norm": (0, INF, False, False),
    "trainer.checkpoint_every": (0, 10_000_000, True, True),
    "trainer.keep_checkpoints": (0, 1_000_000, True, True),
    "trainer.encode_batch_size": (1, 4096, True, True),
    "trainer.l2_to_initializer": (0, INF, True, False),
    "trainer.validation.every": (0, 10_000_000, True, True),
    "trainer.validation.batch_size": (1, 4096, True, True),
    "trainer.early_stopping_window": (2, 1_000_000, True, True),
    "trainer.early_stopping_threshold": (0, 1, False, True),
    "trainer.early_stopping_patience": (1, 1_000_000, True, True),
    "trainer.early_stopping_cooldown": (0, 1_000_000, True, True),
    "eval.images_per_prompt": (1, 1000, True, True),
    "eval.num_steps": (1, 1000, True, True),
    "eval.guidance_scale": (0, 100, True, True),
    "eval.eta": (0, 1, True, True),
    "eval.seed": (0, 2**31 - 1, True, True),
    "eval.preview_every": (0, 10_000_000, True, True),
    "eval.score_every": (0, 10_000_000, True, True),
    "eval.score_images": (1, 1000, True, True),
    "logger.log_every": (1, 10_000_000, True, True),
    "logger.init_timeout": (0, 3600, False, True),
    "resolution": (8, 4096, True, True),  # evaluate
}
CHOICES: dict[str, tuple] = {
    "model.precision": ("float32", "mixed_float16", "mixed_bfloat16"),
    "model.frozen_dtype": (None, "float32", "float16", "bfloat16"),
    "data.crop": ("center", "random_resized"),
    "trainer.lr_schedule": ("constant", "linear", "cosine"),
    "trainer.strategy": ("default", "mirrored", "multi_worker_mirrored"),
    "logger.name": ("none", "wandb", "tensorboard"),
    "logger.mode": ("online", "offline", "disabled"),
    "eval.best_by": ("validation_loss", "clip_i", "clip_t", "attribute_score", "edit_score"),
}
PROMPT_OPT_OUT = "eval.require_placeholder"
NORM_TARGETS = ("vocabulary", "initializer")  # token.norm: one of these, a positive number, or null (free)
# A placeholder is one token-like word: no whitespace, no quotes or characters Hydra's override grammar splits on.
_PLACEHOLDER = re.compile(r"^[^\s'\"\\{}\[\],=]{1,64}$")


def _flatten(node, prefix: str = "") -> dict[str, object]:
    """The leaves of a typed config as {dotted key: value}; raises ConfigError for keys the schema lacks."""
    out = {}
    known = {f.name for f in dataclasses.fields(node)}
    unknown = sorted(set(vars(node)) - known)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{key}: unknown config key (not in the schema, finetune/config.py); "
                          f"the keys of {prefix.rstrip('.') or 'the config'} are {sorted(known)}")
    for name in sorted(known):
        value = getattr(node, name)
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _describe(low, high, low_in, high_in) -> str:
    left, right = ("[" if low_in else "("), ("]" if high_in else ")")
    return f"in {left}{low}, {'inf' if high == INF else high}{right}"


def check_range(key: str, value) -> None:
    if value is None or key not in RANGES:
        return
    low, high, low_in, high_in = RANGES[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} must be a number {_describe(low, high, low_in, high_in)}")
    ok = math.isfinite(value) and (value >= low if low_in else value > low) and (value <= high if high_in else value < high)
    if not ok:
        raise ConfigError(f"{key}={value} is out of range: it must be {_describe(low, high, low_in, high_in)}")


def _check_leaves(leaves: dict[str, object]) -> None:
    for key, value in leaves.items():
        check_range(key, value)
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{key}={value!r} is not one of {[c for c in CHOICES[key]]}")


def check_placeholder(placeholder, key: str = "token.placeholder") -> None:
    if not isinstance(placeholder, str) or not _PLACEHOLDER.match(placeholder):
        raise ConfigError(
            f"{key}={placeholder!r}: a placeholder is one word of 1 to 64 characters without spaces, quotes, "
            "brackets, commas or '=', such as '<my-concept>'"
        )


def parse_norm(norm, key: str = "token.norm") -> str | float | None:
    """A learned-vector norm target as given (null, a NORM_TARGETS name, or a positive number, also as
    text) -> None, the name or the number (finetune/training/editability.py)."""
    if norm is None or norm in NORM_TARGETS:
        return norm
    try:
        value = float(norm)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}={norm!r}: expected null (a free norm), {' or '.join(NORM_TARGETS)}, "
                          "or a positive number")
    return value


def check_prompts(prompts, require_placeholder: bool, key: str = "eval.prompts") -> None:
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"{key} must be a list of strings, got {prompts!r}")
    missing = [p for p in prompts if "{}" not in p]
    if missing and require_placeholder:
        raise ConfigError(
            f"{key}: prompt {missing[0]!r} has no '{{}}', so it would render without the learned token; "
            f"write '{{}}' where the placeholder goes, or set {PROMPT_OPT_OUT}=false to render it as it is"
        )


def validate_train_config(cfg) -> None:
    """Check every key of a TrainConfig before any work; ConfigError naming the first bad key."""
    leaves = _flatten(cfg)
    _check_leaves(leaves)
    check_placeholder(cfg.token.placeholder)
    parse_norm(cfg.token.norm)
    if cfg.trainer.warmup_steps > cfg.trainer.max_steps:
        raise ConfigError(f"trainer.warmup_steps={cfg.trainer.warmup_steps} must be <= trainer.max_steps="
                          f"{cfg.trainer.max_steps}")
    if cfg.trainer.resume not in (None, "auto") and not str(cfg.trainer.resume).strip():
        raise ConfigError("trainer.resume='' must be null, auto or a path")
    check_prompts(cfg.eval.prompts, cfg.eval.require_placeholder)
    check_monitoring(cfg)


def check_monitoring(cfg) -> None:
    """Early stopping and the best checkpoint need what they follow to be computed during the run."""
    t, e = cfg.trainer, cfg.eval
    if t.early_stopping and t.validation.every <= 0:
        raise ConfigError("trainer.early_stopping=true follows the validation loss, but trainer.validation.every=0 "
                          "never computes it; set trainer.validation.every to a positive number of steps")
    if e.best_by == "validation_loss" and t.validation.every <= 0:
        return  # no best checkpoint: nothing to follow (the default when validation is off)
    if e.best_by != "validation_loss" and (e.score_every <= 0 or not e.enabled or not e.prompts):
        raise ConfigError(f"eval.best_by={e.best_by} follows a score computed during training, but "
                          f"eval.score_every={e.score_every}, eval.enabled={e.enabled}, {len(e.prompts)} eval prompts; "
                          "set eval.score_every > 0 with eval.enabled=true, or eval.best_by=validation_loss")


def validate_evaluate_config(cfg) -> None:
    """Check every key of an EvaluateConfig before any work."""
    leaves = _flatten(cfg)
    _check_leaves(leaves)
    if cfg.token.placeholder is not None:  # null: the placeholder comes from the embedding file
        check_placeholder(cfg.token.placeholder)
    check_prompts(cfg.eval.prompts, cfg.eval.require_placeholder)
