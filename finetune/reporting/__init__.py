"""What a user sees in a run's folder: pictures of the training and report.html.

    plots.py     loss.png, embedding_norm.png, scores.png (matplotlib)
    progress.py  progress.png: the preview prompt across training steps
    report.py    report.html: config, metrics, plots, progress strip, samples in one file
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from finetune.errors import FinetuneError
from finetune.evaluation.grid import save_png_atomic
from finetune.sampling.renderer import expand_prompt
from finetune.reporting.plots import plot_embedding, plot_loss, plot_scores
from finetune.reporting.progress import progress_strip
from finetune.reporting.report import write_report
from finetune.runs import read_overrides

log = logging.getLogger(__name__)

LISTED_FILES = ("learned_embeds.safetensors", "learned_embeds-best.safetensors", "learned_embeds-steps-*.safetensors", "export/*/*", "metrics.json",
                "train.log", "samples/*.png", "checkpoints", "tensorboard", "wandb")


def preview_title(cfg) -> str | None:
    """The prompt and seed of the previews (run.py renders eval.prompts[0] with eval.seed)."""
    if not cfg.eval.prompts:
        return None
    return f"{expand_prompt(cfg.eval.prompts[0], cfg.token.placeholder)} (seed {cfg.eval.seed}) during training"


def write_pictures(run_dir: Path, metrics: dict, cfg) -> dict[str, Path]:
    """loss.png, embedding_norm.png, scores.png and progress.png; returns them and the samples grid by name."""
    pictures = {}
    if metrics["loss_history"]["step"]:
        stopped = metrics.get("stop_reason") == "early_stopping"
        early_stop = (metrics.get("early_stopping_decided_at", metrics["steps"]), metrics["steps"]) if stopped else None
        pictures["loss"] = plot_loss(metrics["loss_history"], run_dir / "loss.png", metrics.get("validation_history"),
                                     early_stop)
        pictures["embedding_norm"] = plot_embedding(metrics["embedding_history"], run_dir / "embedding_norm.png",
                                                    metrics.get("vocabulary_mean_norm"))
    if (metrics.get("score_history") or {}).get("step"):
        pictures["scores"] = plot_scores(metrics["score_history"], run_dir / "scores.png", metrics.get("best"))
    title = preview_title(cfg)
    strip = progress_strip(run_dir / "samples" / "previews", title) if title else None
    if strip is not None:
        pictures["progress"] = save_png_atomic(strip, run_dir / "progress.png")
    if (run_dir / "samples" / "grid.png").is_file():
        pictures["samples/grid"] = run_dir / "samples" / "grid.png"
    return pictures


def write_run_report(run_dir: str | Path, metrics: dict, cfg) -> dict[str, Path]:
    """The pictures and report.html of a finished run; returns the pictures by name.

    A failure here is a warning: the run's results are on disk already.
    """
    run_dir = Path(run_dir)
    try:
        pictures = write_pictures(run_dir, metrics, cfg)
        files = sorted({str(p.relative_to(run_dir)) for pattern in LISTED_FILES for p in run_dir.glob(pattern)})
        subtitle = (f"{cfg.token.placeholder} (initializer: {cfg.token.initializer}) · model {cfg.model.preset} · "
                    f"concept {cfg.data.concept_dir} · {metrics['steps']} steps · {metrics['wall_seconds']:.0f} s")
        write_report(run_dir / "report.html", title=f"{cfg.name} run {run_dir.name}", subtitle=subtitle,
                     metrics=metrics, pictures=pictures, config_yaml=OmegaConf.to_yaml(OmegaConf.structured(cfg)),
                     overrides=read_overrides(run_dir) or [], files=files)
    except FinetuneError:  # the disk is full or read-only: an error, not a report that claims to exist
        raise
    except Exception as e:  # noqa: BLE001 - the report must not turn a finished run into a failed one
        log.warning("could not write the run's pictures or report.html (%s: %s)", type(e).__name__, e)
        return {}
    log.info("report: %s", run_dir / "report.html")
    return pictures
