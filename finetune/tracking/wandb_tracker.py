"""Weights & Biases (`logger=wandb`): scalars, previews with a growing table, embedding artifacts, summary.

Modes: `offline` (the default: everything stays in <run>/wandb/offline-run-*, upload later
with `wandb sync`), `online`, `disabled`. W&B copies each artifact file to a staging folder before
it uploads it (by default under the home folder, $WANDB_DATA_DIR); this tracker points that at
<run>/wandb/offline-run-*/staging while it logs, so every file an upload needs stays in the run folder.
The final artifact holds the diffusers file and every exported format (`export/<format>/<file>`). An online start that fails (no network, no or a bad
key) falls back to offline after `logger.init_timeout` seconds, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

from finetune.tracking.base import Tracker, final_scalars, summary_of

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

    @contextmanager
    def _staging_in_run_folder(self):
        """W&B stages artifact files (embeddings, preview tables) in $WANDB_DATA_DIR: the run folder's, here."""
        saved = os.environ.get("WANDB_DATA_DIR")
        os.environ["WANDB_DATA_DIR"] = str(self.run_folder / "staging")
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("WANDB_DATA_DIR", None)
            else:
                os.environ["WANDB_DATA_DIR"] = saved

    def log_scalars(self, values, step):
        self.run.log(values, step=step)

    def log_preview(self, preview, step):
        caption = f"step {step}: {preview.label}"
        with self._staging_in_run_folder():
            row = [step, preview.prompt, preview.seed, self.wandb.Image(preview.image, caption=caption)]
            if self.table is not None:
                self.table.add_data(*row)
                table = self.table
            else:
                self.rows.append(row)
                table = self.wandb.Table(columns=PREVIEW_COLUMNS, data=self.rows)
            self.run.log({"previews/image": self.wandb.Image(preview.image, caption=caption),
                          "previews/table": table}, step=step)

    def log_embedding(self, path, step, metadata, final=False, exported=None, best=False):
        artifact = self.wandb.Artifact(self.artifact_name, type="model",
                                       metadata={**metadata, "step": step, "formats": ["diffusers", *(exported or {})]})
        with self._staging_in_run_folder():  # add_file copies the file to the staging folder
            artifact.add_file(str(path), name=EMBEDDING_FILENAME)
            for fmt, file in (exported or {}).items():
                artifact.add_file(str(file), name=f"export/{fmt}/{Path(file).name}")
            aliases = ["best"] if best else [f"step-{step}", "latest"] + (["final"] if final else [])
            self.run.log_artifact(artifact, aliases=aliases)

    def finish(self, metrics, pictures):
        scalars = final_scalars(metrics)
        self.run.summary.update(summary_of(metrics))
        self.run.summary.update(scalars)
        images = {f"final/{name}": self.wandb.Image(str(path))
                  for name, path in pictures.items() if Path(path).is_file()}
        with self._staging_in_run_folder():
            self.run.log({**scalars, **images}, step=metrics["steps"])
            self.run.finish()
        if self.offline:
            log.info("wandb: offline run saved; upload it with `wandb sync %s`", self.run_folder)
