"""Weights & Biases (`logger=wandb`): scalars, previews with a growing table, embedding artifacts, summary.

Modes: `offline` (the default: everything stays in <run>/wandb/offline-run-*, upload later
with `wandb sync`), `online`, `disabled`. An online start that fails (no network, no or a bad
key) falls back to offline after `logger.init_timeout` seconds, with a warning.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from finetune.tracking.base import Tracker, summary_of

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
PREVIEW_COLUMNS = ["step", "prompt", "seed", "image"]
EMBEDDING_FILENAME = "learned_embeds.safetensors"  # the file's name in every artifact version


def artifact_name(placeholder: str) -> str:
    """W&B artifact names take letters, digits, '-', '_' and '.': `<cat-toy>` -> `embedding-cat-toy`."""
    return "embedding-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", placeholder).strip("-.") or "token")


def git_root(start: Path) -> Path | None:
    """The git work tree holding `start`, if any: W&B records its commit (it would look in the run folder)."""
    return next((folder for folder in (start, *start.parents) if (folder / ".git").exists()), None)


def start_run(logger_cfg, config: dict, run_dir: Path, name: str, tags: list[str], verbose: bool):
    """wandb.init in `logger_cfg.mode`; an online start that fails falls back to offline."""
    import wandb

    repo = git_root(Path.cwd().resolve())
    settings = wandb.Settings(init_timeout=logger_cfg.init_timeout, silent=not verbose,
                              **({"git_root": str(repo)} if repo else {"disable_git": True}))
    kwargs = dict(project=logger_cfg.project, dir=str(run_dir), config=config, name=name, tags=tags,
                  settings=settings, reinit="finish_previous")
    try:
        return wandb.init(mode=logger_cfg.mode, **kwargs)
    except Exception as e:  # noqa: BLE001 - no network, no key, bad key, quota: all the same to the run
        if logger_cfg.mode != "online":
            raise
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log.warning("wandb: could not start online (%s: %s); logging offline instead, upload later with "
                    "`wandb sync %s/wandb/offline-run-*`", type(e).__name__, first_line, run_dir)
        return wandb.init(mode="offline", **kwargs)


class WandbTracker(Tracker):
    def __init__(self, run, placeholder: str):
        import wandb

        self.wandb, self.run, self.artifact_name = wandb, run, artifact_name(placeholder)
        self.rows: list[list] = []  # the preview table, for wandb releases without incremental tables
        try:
            self.table = wandb.Table(columns=PREVIEW_COLUMNS, log_mode="INCREMENTAL")
        except TypeError:
            self.table = None
        self.offline = run.settings.mode == "offline"
        if self.offline:
            log.info("wandb: offline run in %s", self.run_folder)

    @property
    def run_folder(self) -> Path:
        return Path(self.run.dir).parent  # <run>/wandb/offline-run-<date>-<id>; run.dir is its files/

    def log_scalars(self, values, step):
        self.run.log(values, step=step)

    def log_preview(self, preview, step):
        caption = f"step {step}: {preview.label}"
        row = [step, preview.prompt, preview.seed, self.wandb.Image(preview.image, caption=caption)]
        if self.table is not None:
            self.table.add_data(*row)
            table = self.table
        else:
            self.rows.append(row)
            table = self.wandb.Table(columns=PREVIEW_COLUMNS, data=self.rows)
        self.run.log({"previews/image": self.wandb.Image(preview.image, caption=caption), "previews/table": table},
                     step=step)

    def log_embedding(self, path, step, metadata, final=False):
        artifact = self.wandb.Artifact(self.artifact_name, type="model", metadata={**metadata, "step": step})
        artifact.add_file(str(path), name=EMBEDDING_FILENAME)
        self.run.log_artifact(artifact, aliases=[f"step-{step}", "latest"] + (["final"] if final else []))

    def finish(self, metrics, pictures):
        self.run.summary.update(summary_of(metrics))
        images = {f"final/{name}": self.wandb.Image(str(path))
                  for name, path in pictures.items() if Path(path).is_file()}
        if images:
            self.run.log(images, step=metrics["steps"])
        self.run.finish()
        if self.offline:
            log.info("wandb: offline run saved; upload it with `wandb sync %s`", self.run_folder)
