"""Experiment tracking: one backend per module, chosen by `logger=` (finetune/configs/logger/).

    base.py                 Tracker (logs nothing: `logger=none`), GuardedTracker (failures are warnings)
    wandb_tracker.py        Weights & Biases: scalars, previews + table, embedding artifacts, summary
    tensorboard_tracker.py  TensorBoard: scalars, previews, final metrics
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from finetune.errors import ConfigError
from finetune.tracking.base import GuardedTracker, Tracker

log = logging.getLogger(__name__)

BACKENDS = ("none", "wandb", "tensorboard")


def run_labels(cfg, run_dir: Path) -> tuple[str, list[str]]:
    """A run's display name (`<concept>-<run folder>`) and tags (concept, preset, placeholder)."""
    concept = Path(str(cfg.data.concept_dir)).name
    return f"{concept}-{Path(run_dir).name}", [concept, cfg.model.preset, cfg.token.placeholder]


# The config keys a run is compared by in TensorBoard's HParams tab (with the final metrics).
HPARAMS = ("model.preset", "data.resolution", "data.repeats", "data.crops_per_image", "token.num_vectors",
           "token.initializer", "trainer.max_steps", "trainer.batch_size", "trainer.gradient_accumulation_steps",
           "trainer.learning_rate", "trainer.scale_lr", "trainer.lr_schedule", "trainer.warmup_steps",
           "trainer.weight_decay", "trainer.max_grad_norm", "seed")


def hparams_of(cfg) -> dict[str, object]:
    """The HPARAMS keys of a config: numbers and booleans as they are, anything else (null too) as text."""
    out = {}
    for key in HPARAMS:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = value if isinstance(value, (bool, int, float)) else str(value)
    return out


def check_logger(logger_cfg) -> None:
    from finetune.tracking.wandb_tracker import MODES

    if logger_cfg.name not in BACKENDS:
        raise ConfigError(f"logger.name={logger_cfg.name!r}; choose one of {list(BACKENDS)}")
    if logger_cfg.name == "wandb" and logger_cfg.mode not in MODES:
        raise ConfigError(f"logger.mode={logger_cfg.mode!r}; choose one of {list(MODES)}")


def make_tracker(cfg, run_dir: str | Path) -> Tracker:
    """The tracker `cfg.logger` selects. One that cannot start is a warning, and the run goes on untracked."""
    check_logger(cfg.logger)
    name = cfg.logger.name
    if name == "none":
        return Tracker()
    run_dir = Path(run_dir)
    config = OmegaConf.to_container(OmegaConf.structured(cfg))
    try:
        if name == "wandb":
            from finetune.tracking.wandb_tracker import WandbTracker, start_run

            run_name, tags = run_labels(cfg, run_dir)
            backend = WandbTracker(start_run(cfg.logger, config, run_dir, run_name, tags, cfg.verbose),
                                   cfg.token.placeholder)
        else:
            from finetune.tracking.tensorboard_tracker import TensorBoardTracker

            backend = TensorBoardTracker(run_dir / "tensorboard", OmegaConf.to_yaml(config), hparams_of(cfg),
                                         run_dir.name)
    except Exception as e:  # noqa: BLE001 - tracking must never end a run
        log.warning("%s: could not start (%s: %s); training without it", name, type(e).__name__, e)
        return Tracker()
    return GuardedTracker(backend, name)
