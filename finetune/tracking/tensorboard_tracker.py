"""TensorBoard (`logger=tensorboard`): the same scalars and previews as W&B, as tf.summary events
in <run>/tensorboard (view with `tensorboard --logdir outputs`). At the end: every final number as a
scalar (`final/...`, `quality/...`: CLIP-I, CLIP-T, attribute scores) and an HParams entry (the config
keys of `finetune.tracking.HPARAMS` with those scalars as its metrics)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.tracking.base import Tracker, final_scalars, summary_of

log = logging.getLogger(__name__)


def _markdown_code(text: str) -> str:
    """TensorBoard's text tab renders Markdown: indent by four spaces to show `text` verbatim."""
    return "\n".join("    " + line for line in text.splitlines())


class TensorBoardTracker(Tracker):
    def __init__(self, log_dir: Path, config_yaml: str, hparams: dict | None = None, trial_id: str | None = None):
        import tensorflow as tf

        self.tf, self.hparams, self.trial_id = tf, dict(hparams or {}), trial_id
        self.writer = tf.summary.create_file_writer(str(log_dir))
        with self.writer.as_default():
            tf.summary.text("config", _markdown_code(config_yaml), step=0)
        log.info("tensorboard: events in %s (view with `tensorboard --logdir %s`)", log_dir, log_dir)

    def log_scalars(self, values, step):
        with self.writer.as_default(step=step):
            for key, value in values.items():
                self.tf.summary.scalar(key, value)

    def log_preview(self, preview, step):
        caption = f"step {step}: {preview.label}"
        with self.writer.as_default(step=step):
            self.tf.summary.image("previews", np.asarray(preview.image)[None], description=caption)
            self.tf.summary.text("previews/caption", caption)
        self.writer.flush()

    def finish(self, metrics, pictures):
        step = metrics["steps"]
        summary = summary_of(metrics)
        rows = "\n".join(f"| {key} | {value} |" for key, value in sorted(summary.items()))
        scalars = final_scalars(metrics)
        with self.writer.as_default(step=step):
            self.tf.summary.text("final/metrics", f"| metric | value |\n|---|---|\n{rows}")
            for tag, value in scalars.items():
                self.tf.summary.scalar(tag, value)
            if self.hparams:
                from tensorboard.plugins.hparams import api as hp

                hp.hparams_config(hparams=[hp.HParam(key) for key in self.hparams],
                                  metrics=[hp.Metric(tag) for tag in scalars])
                hp.hparams(self.hparams, trial_id=self.trial_id)
            for name, path in pictures.items():
                if Path(path).is_file():
                    image = np.asarray(Image.open(path).convert("RGB"))
                    self.tf.summary.image(f"final/{name}", image[None])
        self.writer.close()
