"""Checkpoints: named groups of variables (a textual-inversion run's learned vectors and optimizer
state; a pretraining stage's model, optimizer and EMA) and a `meta.json` with the step.

A checkpoint is a folder `checkpoints/step-000100/` holding `state.safetensors` and
`meta.json`. It is written into a temporary folder and renamed into place, so a run
killed mid-write leaves either the whole checkpoint or none. The random state needs no
saving: every random draw of a step is a function of (seed, step).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from finetune.errors import DataError, FinetuneError, MissingFileError
from finetune.io import fault_point, locked_by_another_process, write_bytes_atomic, write_json_atomic
from finetune.safefiles import ALL_DTYPES, SafetensorsReader, describe_path, dump_safetensors, read_json

log = logging.getLogger(__name__)

STATE_FILE, META_FILE = "state.safetensors", "meta.json"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"
HINT = "the checkpoint is damaged; resume from an older one"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{PREFIX}{step:06d}"


def save_checkpoint(run_dir: Path, step: int, groups: dict[str, list], meta: dict, keep: int = 3) -> Path:
    """Write every variable of `groups` (name -> variables) and `meta` as checkpoint `step`, atomically;
    keep the newest `keep` checkpoints (0: all). The sha256 of the tensor data is stored in the state
    file's header and in meta.json, and checked when the checkpoint is loaded."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tensors = {
        f"{group}/{i:04d}/{var.path}": np.array(keras.ops.convert_to_numpy(var), order="C")
        for group, variables in groups.items()
        for i, var in enumerate(variables)
    }
    data = dump_safetensors(tensors, checksum=True)
    try:
        tmp.mkdir(parents=True)
        write_bytes_atomic(tmp / STATE_FILE, data, "checkpoint")
        write_json_atomic(tmp / META_FILE, {**meta, "step": step, "state_sha256": SafetensorsReader(
            tmp / STATE_FILE, dtypes=ALL_DTYPES, max_tensor_bytes=len(data)).metadata["sha256"]})
        fault_point(f"checkpoint:{step}")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fault_point(f"checkpoint-done:{step}")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FinetuneError(f"cannot write checkpoint {final}: {e.strerror or e}; check the folder is writable "
                            "and has room") from None
    except FinetuneError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _step_of(path: Path) -> int:
    try:
        return int(path.name[len(PREFIX):])
    except ValueError:
        return -1


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete-looking checkpoints of `run_dir` (both files present), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if _step_of(p) >= 0 and (p / META_FILE).is_file()
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: (_step_of(p), p.name))


def read_meta(path: Path) -> dict:
    """A checkpoint's meta.json, validated: a JSON object with an int `step` >= 0 (DataError otherwise)."""
    meta = read_json(Path(path) / META_FILE, "checkpoint meta", max_bytes=64 * 2**20)
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise DataError(f"{describe_path(Path(path) / META_FILE)} has no valid step ({step!r})")
    for key in ("fingerprint", "state_sha256"):
        if key in meta and not isinstance(meta[key], str):
            raise DataError(f"{describe_path(Path(path) / META_FILE)}: {key} is not a string")
    return meta


def check_checkpoint(path: Path) -> dict:
    """Validate a checkpoint without loading it into a model: meta.json, the state file's header, and
    the sha256 of its tensor data against meta.json (or its own header). Returns the meta; DataError if damaged."""
    path = Path(path)
    meta = read_meta(path)
    reader = SafetensorsReader(path / STATE_FILE, dtypes=ALL_DTYPES, hint=HINT, what="checkpoint")
    expected = meta.get("state_sha256") or reader.metadata.get("sha256")
    if expected is not None and reader.data_sha256() != expected:
        raise DataError(f"{describe_path(path / STATE_FILE)}: its tensor data does not match its sha256 checksum; {HINT}")
    if reader.metadata.get("sha256") not in (None, expected):
        raise DataError(f"{describe_path(path / STATE_FILE)}: its checksum differs from meta.json's; {HINT}")
    return meta


def find_resume_checkpoint(resume: str | None, run_dir: Path, fingerprint: str) -> Path | None:
    """The checkpoint to continue from.

    `resume=None`: none. `resume=auto`: the newest intact checkpoint with the same run fingerprint
    (same model, data, token, seed and trainer settings) in this run folder or in sibling run folders
    of the same parent (Hydra gives each launch its own folder); a damaged one is skipped with one
    warning line saying which and why. Otherwise a path to a checkpoint folder or to a run folder
    (its newest intact checkpoint).
    """
    if not resume:
        return None
    if resume == "auto":
        run_dir = Path(run_dir)
        candidates = list_checkpoints(run_dir)
        if run_dir.parent.is_dir():
            for sibling in sorted(run_dir.parent.iterdir()):
                try:
                    if sibling != run_dir and sibling.is_dir():
                        candidates += list_checkpoints(sibling)
                except OSError:  # an unreadable sibling is not this run's business
                    continue
        return _newest_intact(candidates, fingerprint)
    path = Path(resume).expanduser()
    if (path / META_FILE).is_file():
        check_checkpoint(path)
        return path
    found = list_checkpoints(path)
    if not found:
        raise MissingFileError(f"trainer.resume={resume}: no checkpoint there (expected {PREFIX}NNNNNN/{META_FILE})")
    chosen = _newest_intact(found, None)
    if chosen is None:
        raise DataError(f"trainer.resume={resume}: every checkpoint there is damaged")
    return chosen


def _newest_intact(candidates: list[Path], fingerprint: str | None) -> Path | None:
    """Newest first (step, then modification time): the first whose meta matches and which is intact."""
    def order(c: Path):
        try:
            return (_step_of(c), c.stat().st_mtime)
        except OSError:
            return (_step_of(c), 0.0)

    for c in sorted(candidates, key=order, reverse=True):
        try:
            meta = read_meta(c)
        except FinetuneError as e:
            log.warning("skipped checkpoint %s: %s", describe_path(c), e)
            continue
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            continue
        try:
            check_checkpoint(c)
        except FinetuneError as e:
            log.warning("skipped checkpoint %s: %s", describe_path(c), e)
            continue
        return c
    return None


def restore_checkpoint(path: Path, groups: dict[str, list]) -> dict:
    """Load a checkpoint into the variables of `groups` (same names and order as saved), one tensor at a
    time, after checking it (`check_checkpoint`); returns its meta."""
    path = Path(path)
    meta = check_checkpoint(path)
    reader = SafetensorsReader(path / STATE_FILE, dtypes=ALL_DTYPES, hint=HINT, what="checkpoint")
    for group, variables in groups.items():
        keys = sorted(k for k in reader.entries if k.startswith(f"{group}/"))
        if len(keys) != len(variables):
            raise DataError(f"{path}: {group} has {len(keys)} variables, this run {len(variables)}")
        for key, var in zip(keys, variables):
            shape = tuple(reader.entries[key][1])
            if shape != tuple(var.shape):
                raise DataError(f"{path}: {key} has shape {shape}, this run's {var.path} {tuple(var.shape)}")
            var.assign(reader.read(key, as_float32=False))
    return meta


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Remove what a killed run left half-written in `run_dir`: temporary checkpoint folders and the
    temporary files of `finetune.io.atomic_write` (`.<name>.<random>.tmp`). Returns what was removed.
    A folder another live process holds (`finetune.io.lock_run_folder`) is left alone."""
    run_dir = Path(run_dir)
    removed = []
    if not run_dir.is_dir() or locked_by_another_process(run_dir):  # a live run's temp files are its own
        return removed
    for root, dirs, files in os.walk(run_dir):
        for d in list(dirs):
            if d.startswith(TMP_PREFIX + PREFIX):
                shutil.rmtree(Path(root) / d, ignore_errors=True)
                removed.append(Path(root) / d)
                dirs.remove(d)
        for f in files:
            if f.startswith(".") and f.endswith(".tmp"):
                try:
                    os.unlink(Path(root) / f)
                    removed.append(Path(root) / f)
                except OSError:
                    pass
    if removed:
        log.info("removed %d temporary file(s) of an interrupted run in %s", len(removed), describe_path(run_dir))
    return removed
