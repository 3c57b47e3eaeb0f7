"""Experiment loggers. `logger=none` logs nothing; `logger=wandb` logs to Weights & Biases.

A logger failure (no network, bad key, quota) is a warning: it never stops a run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class NullLogger:
    def log_scalars(self, values: dict, step: int) -> None: ...

    def log_images(self, key: str, images: list, captions: list[str], step: int) -> None: ...

    def finish(self, summary: dict) -> None: ...


class WandbLogger(NullLogger):
    def __init__(self, config: dict, run_dir: Path, project: str, mode: str, name: str, tags: list[str]):
        import wandb

        self.wandb = wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=project, mode=mode, dir=str(run_dir), config=config, name=name, tags=tags, reinit="finish_previous"
        )

    def _safely(self, what: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - tracking must never end a run
            log.warning("wandb: could not %s (%s); the run goes on", what, e)

    def log_scalars(self, values, step):
        self._safely("log scalars", lambda: self.run.log(values, step=step))

    def log_images(self, key, images, captions, step):
        self._safely(
            "log images",
            lambda: self.run.log({key: [self.wandb.Image(i, caption=c) for i, c in zip(images, captions)]}, step=step),
        )

    def finish(self, summary):
        def _finish():
            self.run.summary.update(summary)
            self.run.finish()

        self._safely("finish", _finish)


def make_logger(cfg, config_dict: dict, run_dir: Path, tags: list[str]) -> NullLogger:
    if cfg.name == "none":
        return NullLogger()
    if cfg.name == "wandb":
        try:
            return WandbLogger(config_dict, run_dir, cfg.project, cfg.mode, Path(run_dir).name, tags)
        except Exception as e:  # noqa: BLE001
            log.warning("wandb: could not start (%s); training without it", e)
            return NullLogger()
    from finetune.errors import ConfigError

    raise ConfigError(f"logger.name={cfg.name!r}; choose none or wandb")
