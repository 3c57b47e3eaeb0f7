"""What a run tells an experiment tracker, and the guard that keeps tracking from ending a run."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class Tracker:
    """Receives a run's numbers and pictures. This base class drops them all (`logger=none`)."""

    def log_scalars(self, values: dict[str, float], step: int) -> None: ...

    def log_preview(self, preview, step: int) -> None:
        """`preview`: a finetune.sampling.renderer.RenderedImage (prompt, seed, uint8 image)."""

    def log_embedding(self, path: Path, step: int, metadata: dict[str, str], final: bool = False,
                      exported: dict[str, Path] | None = None, best: bool = False) -> None:
        """An embedding file the run just wrote (a snapshot at `step`, the final one, or with `best` the
        vectors of the best monitored value so far: eval.best_by), with the same vectors in other formats
        (`exported`: {format: file}, finetune.export.formats)."""

    def finish(self, metrics: dict, pictures: dict[str, Path]) -> None:
        """The final metrics (metrics.json) and the run's pictures by name (e.g. "samples/grid")."""


def summary_of(metrics: dict) -> dict:
    """The final metrics without the per-step histories and sampling settings."""
    return {k: v for k, v in metrics.items() if not k.endswith("_history") and k != "sampling" and v is not None}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def final_scalars(metrics: dict) -> dict[str, float]:
    """Every number of the final metrics as one scalar each, for dashboards: `final/<key>` (losses,
    steps, times, `final/learned_vector_norms/<i>`, any validation loss) and `quality/<prompt or all>/<score>`
    (CLIP-I, CLIP-T, attribute score, `.../attributes/<attribute>`, any edit score); not the per-step
    histories (logged per step), the sampling settings or image counts."""
    out: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if _number(value):
            out[prefix] = float(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key != "n":
                    walk(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)) and all(_number(v) for v in value):
            for i, item in enumerate(value):
                walk(f"{prefix}/{i}", item)

    for key, value in summary_of(metrics).items():
        walk("quality" if key == "quality" else f"final/{key}", value)
    return out


class GuardedTracker(Tracker):
    """Forwards every call to a tracker; a failure becomes one warning per kind of call, and the run goes on.

    Network errors, bad keys, quotas, a full disk under the tracker's folder: none of them may
    cost the user a training run.
    """

    def __init__(self, tracker: Tracker, name: str):
        self.tracker, self.name, self._warned = tracker, name, set()

    def _call(self, what: str, *args, **kwargs) -> None:
        try:
            getattr(self.tracker, what)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never end a run
            level = logging.DEBUG if what in self._warned else logging.WARNING
            self._warned.add(what)
            log.log(level, "%s: %s failed (%s: %s); the run goes on without it", self.name, what, type(e).__name__, e)

    def log_scalars(self, values, step):
        self._call("log_scalars", values, step)

    def log_preview(self, preview, step):
        self._call("log_preview", preview, step)

    def log_embedding(self, path, step, metadata, final=False, exported=None, best=False):
        self._call("log_embedding", path, step, metadata, final, exported, best)

    def finish(self, metrics, pictures):
        self._call("finish", metrics, pictures)
