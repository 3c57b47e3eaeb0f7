"""The run's training plots: loss.png (raw + smoothed loss, the validation loss, learning rate),
embedding_norm.png (each learned vector's norm and its cosine similarity to where it started) and
scores.png (the quality scores measured during training, the best step marked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from finetune.io import atomic_write

DPI = 110
FIGSIZE = (8.0, 6.0)
RAW_COLOR, SMOOTH_COLOR, LR_COLOR, REFERENCE_COLOR = "#9db8d9", "#1f4e96", "#c26a00", "#777777"
VALIDATION_COLOR, STOP_COLOR = "#b3261e", "#2e7d32"


def smooth(values, span: int | None = None) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard's smoothing), NaN-tolerant.

    `span` defaults to a tenth of the run (at least 1, at most 100 updates).
    """
    values = np.asarray(values, dtype=np.float64)
    span = span or int(np.clip(len(values) // 10, 1, 100))
    alpha = 2.0 / (span + 1.0)
    out, average, weight = np.empty_like(values), 0.0, 0.0
    for i, v in enumerate(values):
        if np.isfinite(v):
            average, weight = (1 - alpha) * average + alpha * v, (1 - alpha) * weight + alpha
        out[i] = average / weight if weight > 0 else np.nan
    return out


def _figure(title: str) -> tuple[Figure, tuple]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    fig.suptitle(title, fontsize=13)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    bottom.set_xlabel("step")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, (top, bottom)


def _marker(n: int) -> str | None:
    return "o" if n <= 20 else None  # a handful of points: show each


def _save(fig: Figure, path: Path) -> Path:
    with atomic_write(path, "image") as f:
        fig.savefig(f, format="png", dpi=DPI)
    return Path(path)


def _numbers(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], np.float64)


def plot_loss(history: dict, path: str | Path, validation: dict | None = None,
              early_stop: tuple[int, int] | None = None) -> Path:
    """`history`: metrics.json's loss_history ({"step", "loss", "lr", ...}); `validation`: its
    validation_history ({"step", "loss"}), drawn on the same axes; `early_stop`: (the step after which
    early stopping's criterion held, the step the run stopped at after its cooldown)."""
    steps, loss, lr = history["step"], history["loss"], history["lr"]
    fig, (top, bottom) = _figure("Training loss")
    marker = _marker(len(steps))
    top.plot(steps, loss, color=RAW_COLOR, linewidth=1, marker=marker, markersize=3, label="loss (each step)")
    top.plot(steps, smooth(loss), color=SMOOTH_COLOR, linewidth=2, label="smoothed")
    handles = []
    if validation and validation.get("step"):  # its own scale (right): far smoother and smaller than a step's loss
        right = top.twinx()
        handles += right.plot(validation["step"], _numbers(validation["loss"]), color=VALIDATION_COLOR, linewidth=2,
                              marker=_marker(len(validation["step"])), markersize=3,
                              label="validation loss (fixed batch, right axis)")
        right.set_ylabel("validation MSE", color=VALIDATION_COLOR)
        right.tick_params(axis="y", colors=VALIDATION_COLOR)
    if early_stop is not None:
        decided, stopped = early_stop
        for ax in (top, bottom):
            ax.axvline(decided, color=STOP_COLOR, linestyle="--", linewidth=1.2)
            if stopped > decided:
                ax.axvspan(decided, stopped, color=STOP_COLOR, alpha=0.12, linewidth=0)
        label = f"early stopping at step {decided}" + (f", cooldown to step {stopped}" if stopped > decided else "")
        handles += top.plot([], [], color=STOP_COLOR, linestyle="--", label=label)
    top.set_ylabel("noise-prediction MSE")
    own = [line for line in top.get_lines() if not line.get_label().startswith("_")]
    top.legend(handles=list(dict.fromkeys(own + handles)), loc="upper right")
    bottom.plot(steps, lr, color=LR_COLOR, linewidth=2, marker=marker, markersize=3)
    bottom.set_ylabel("learning rate")
    bottom.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return _save(fig, path)


def plot_embedding(history: dict, path: str | Path, vocabulary_norm: float | None = None) -> Path:
    """`history`: metrics.json's embedding_history ({"step", "norm": [[per vector]], "cosine_to_init"})."""
    steps = history["step"]
    norms, cosines = np.asarray(history["norm"]), np.asarray(history["cosine_to_init"])
    fig, (top, bottom) = _figure("Learned vectors")
    marker = _marker(len(steps))
    for i in range(norms.shape[1]):
        label = f"vector {i}" if norms.shape[1] > 1 else "learned vector"
        line, = top.plot(steps, norms[:, i], linewidth=2, marker=marker, markersize=3, label=label)
        bottom.plot(steps, cosines[:, i], linewidth=2, marker=marker, markersize=3, color=line.get_color(), label=label)
    if vocabulary_norm is not None:
        top.axhline(vocabulary_norm, color=REFERENCE_COLOR, linestyle="--", linewidth=1.2,
                    label=f"mean norm of the vocabulary ({vocabulary_norm:.3g})")
    top.set_ylabel("L2 norm")
    # From 0, so a norm held fixed (token.norm) reads as a flat line, not as float noise on an offset axis.
    top.set_ylim(0, 1.15 * max(float(np.max(norms)), vocabulary_norm or 0.0))
    top.legend(loc="best")
    bottom.set_ylabel("cosine similarity\nto the initial vector")
    bottom.set_ylim(min(-0.05, float(np.nanmin(cosines)) - 0.05) if cosines.size else -0.05, 1.05)
    return _save(fig, path)


def plot_scores(history: dict, path: str | Path, best: dict | None = None) -> Path:
    """`history`: metrics.json's score_history ({"step", "<score>": [...]}); `best`: its best ({"by", "step"})."""
    steps = history["step"]
    fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1] * 0.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    fig.suptitle("Quality during training", fontsize=13)
    ax.grid(True, alpha=0.3)
    for name, values in history.items():
        if name != "step":
            ax.plot(steps, _numbers(values), linewidth=2, marker=_marker(len(steps)) or ".", markersize=4, label=name)
    if best and best.get("step") is not None:
        ax.axvline(best["step"], color=REFERENCE_COLOR, linestyle="--", linewidth=1.2,
                   label=f"best by {best['by']} (step {best['step']})")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("score")
    ax.set_ylim(min(-0.05, float(np.nanmin([_numbers(v).min() for k, v in history.items() if k != "step"] or [0]))), 1.05)
    ax.legend(loc="best")
    return _save(fig, path)
