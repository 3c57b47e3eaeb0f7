"""Small tracked training runs shared by test_tracking.py, test_report.py and test_runs_cli.py.

Each run is made once per test session (a run costs tens of seconds on 2 cores) under one
root folder, as `python -m finetune.train` would make it: .hydra/overrides.yaml first, then
the run.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from tests.conftest import FAST, compose_train

# FAST on the tiny preset with random weights (plumbing: no weight files needed); 4 steps,
# an embedding snapshot, a preview, the validation loss and the scores every 2, 2-step sampling of one
# prompt, every step logged.
TRACKED = tuple(o for o in FAST if not o.startswith("model=")) + (
    "model=tiny_random", "trainer.max_steps=4", "trainer.checkpoint_every=2", "eval.enabled=true",
    "eval.preview_every=2", "eval.num_steps=2", "eval.images_per_prompt=1", "eval.prompts=['a photo of {}']",
    "logger.log_every=1", "trainer.validation.every=2", "eval.score_every=2", "eval.score_images=1",
)
PREVIEW_STEPS = [2, 4]
# Every safetensors format (a1111_pt needs torch, an optional extra): the W&B run's final artifact holds them all.
EXPORTS = "export.formats=[diffusers,a1111_safetensors,kohya]"

_done: dict[tuple[str, ...], tuple[Path, dict]] = {}


def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "tracked-runs"
    root.mkdir(exist_ok=True)
    return root


def shared_data_dir(tmp_path_factory) -> str:
    """data.data_dir=... for all of them: the concept's dataset is prepared once."""
    return f"data.data_dir={runs_root(tmp_path_factory) / 'tfds'}"


def tracked_run(tmp_path_factory, name: str, *overrides: str) -> tuple[Path, dict]:
    """(run folder, metrics) of `python -m finetune.train <TRACKED> <overrides>`, made on first use."""
    from finetune.training.run import train

    if overrides not in _done:
        root = runs_root(tmp_path_factory)
        run_dir = root / "tiny" / name
        (run_dir / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / ".hydra" / "overrides.yaml")
        mode = os.environ.pop("WANDB_MODE", None)  # the defaults, whatever this shell says
        try:
            cfg = compose_train(*TRACKED, shared_data_dir(tmp_path_factory), *overrides)
        finally:
            if mode is not None:
                os.environ["WANDB_MODE"] = mode
        _done[overrides] = run_dir, train(cfg, run_dir)
    return _done[overrides]


def wandb_run(tmp_path_factory) -> tuple[Path, dict]:
    """The default W&B run: offline."""
    return tracked_run(tmp_path_factory, "wandb-run", "logger=wandb", EXPORTS)


def tensorboard_run(tmp_path_factory) -> tuple[Path, dict]:
    return tracked_run(tmp_path_factory, "tensorboard-run", "logger=tensorboard", "trainer.learning_rate=0.001")
