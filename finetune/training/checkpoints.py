"""Checkpoints: named groups of variables (a textual-inversion run's learned vectors and optimizer
state; a pretraining stage's model, optimizer and EMA) and a `meta.json` with the step.

A checkpoint is a folder `checkpoints/step-000100/` holding `state.safetensors` and
`meta.json`. It is written into a temporary folder and renamed into place, so a run
killed mid-write leaves either the whole checkpoint or none. The random state needs no
saving: every random draw of a step is a function of (seed, step).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from finetune.errors import DataError, MissingFileError

STATE_FILE, META_FILE = "state.safetensors", "meta.json"
PREFIX = "step-"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{PREFIX}{step:06d}"


def save_checkpoint(run_dir: Path, step: int, groups: dict[str, list], meta: dict, keep: int = 3) -> Path:
    """Write every variable of `groups` (name -> variables) and `meta` as checkpoint `step`, atomically;
    keep the newest `keep` checkpoints (0: all)."""
    from safetensors.numpy import save_file

    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {
        f"{group}/{i:04d}/{var.path}": np.array(keras.ops.convert_to_numpy(var), order="C")
        for group, variables in groups.items()
        for i, var in enumerate(variables)
    }
    save_file(tensors, str(tmp / STATE_FILE))
    (tmp / META_FILE).write_text(json.dumps({**meta, "step": step}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of `run_dir`, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{PREFIX}*") if (p / META_FILE).is_file() and (p / STATE_FILE).is_file())


def read_meta(path: Path) -> dict:
    return json.loads((Path(path) / META_FILE).read_text())


def find_resume_checkpoint(resume: str | None, run_dir: Path, fingerprint: str) -> Path | None:
    """The checkpoint to continue from.

    `resume=None`: none. `resume=auto`: the newest checkpoint with the same run fingerprint
    (same model, data, token, seed and trainer settings) in this run folder or in sibling
    run folders of the same parent (Hydra gives each launch its own folder). Otherwise a
    path to a checkpoint folder or to a run folder.
    """
    if not resume:
        return None
    if resume == "auto":
        run_dir = Path(run_dir)
        candidates = list_checkpoints(run_dir)
        if run_dir.parent.is_dir():
            for sibling in run_dir.parent.iterdir():
                if sibling != run_dir and sibling.is_dir():
                    candidates += list_checkpoints(sibling)
        matching = [c for c in candidates if read_meta(c).get("fingerprint") == fingerprint]
        return max(matching, key=lambda c: (read_meta(c)["step"], c.stat().st_mtime), default=None)
    path = Path(resume).expanduser()
    if (path / META_FILE).is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise MissingFileError(f"trainer.resume={resume}: no checkpoint there (expected {PREFIX}NNNNNN/{META_FILE})")
    return found[-1]


def restore_checkpoint(path: Path, groups: dict[str, list]) -> dict:
    """Load a checkpoint into the variables of `groups` (same names and order as saved); returns its meta."""
    from safetensors.numpy import load_file

    tensors = load_file(str(Path(path) / STATE_FILE))
    for group, variables in groups.items():
        keys = sorted(k for k in tensors if k.startswith(f"{group}/"))
        if len(keys) != len(variables):
            raise DataError(f"{path}: {group} has {len(keys)} variables, this run {len(variables)}")
        for key, var in zip(keys, variables):
            if tensors[key].shape != tuple(var.shape):
                raise DataError(f"{path}: {key} has shape {tensors[key].shape}, this run's {var.path} {tuple(var.shape)}")
            var.assign(tensors[key])
    return read_meta(path)
