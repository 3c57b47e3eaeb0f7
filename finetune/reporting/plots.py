"""The run's training plots: loss.png (raw + smoothed loss, learning rate) and embedding_norm.png
(each learned vector's norm and its cosine similarity to where it started)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from finetune.io import atomic_write

DPI = 110
FIGSIZE = (8.0, 6.0)
RAW_COLOR, SMOOTH_COLOR, LR_COLOR, REFERENCE_COLOR = "#9db8d9", "#1f4e96", "#c26a00", "#777777"


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


def plot_loss(history: dict, path: str | Path) -> Path:
    """`history`: metrics.json's loss_history ({"step", "loss", "lr", ...})."""
    steps, loss, lr = history["step"], history["loss"], history["lr"]
    fig, (top, bottom) = _figure("Training loss")
    marker = _marker(len(steps))
    top.plot(steps, loss, color=RAW_COLOR, linewidth=1, marker=marker, markersize=3, label="loss (each step)")
    top.plot(steps, smooth(loss), color=SMOOTH_COLOR, linewidth=2, label="smoothed")
    top.set_ylabel("noise-prediction MSE")
    top.legend(loc="upper right")
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
    top.legend(loc="best")
    bottom.set_ylabel("cosine similarity\nto the initial vector")
    bottom.set_ylim(min(-0.05, float(np.nanmin(cosines)) - 0.05) if cosines.size else -0.05, 1.05)
    return _save(fig, path)
