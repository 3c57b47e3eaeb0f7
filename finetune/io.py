"""Writing run outputs so that nothing is ever half-written: temp file in place, then rename."""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

from finetune.errors import ConfigError, FinetuneError

# Test hook of the kill-point tests: FINETUNE_KILL_AT=<point pattern> (e.g. "rename:metrics.json",
# "before-rename:state.safetensors", "step:3") kills this process with SIGKILL when it gets there.
KILL_ENV = "FINETUNE_KILL_AT"


def fault_point(name: str) -> None:
    """Named place where a run can be killed by the kill-point tests (no effect unless $FINETUNE_KILL_AT matches)."""
    pattern = os.environ.get(KILL_ENV)
    if pattern and fnmatch.fnmatchcase(name, pattern):
        os.kill(os.getpid(), signal.SIGKILL)


class RunFolderLocked(ConfigError):
    """Another live process writes this run folder."""


_LOCKS: dict[str, int] = {}


def locked_by_another_process(run_dir: str | os.PathLike) -> bool:
    """True while another live process holds `run_dir`'s lock (`lock_run_folder`)."""
    import fcntl

    run_dir = Path(run_dir)
    if str(run_dir.resolve()) in _LOCKS or not (run_dir / ".lock").is_file():
        return False
    try:
        fd = os.open(run_dir / ".lock", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the probe's lock


def lock_run_folder(run_dir: str | os.PathLike) -> Path:
    """Lock `run_dir` for this process (held until it exits; again from the same process is a no-op).

    A second process that asks for the same folder gets RunFolderLocked (one line naming the folder and
    the process holding it) instead of silently overwriting the first run's files."""
    import fcntl

    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _LOCKS:
        return run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise FinetuneError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunFolderLocked(
            f"run folder {run_dir} is in use by a running job (pid {holder}); wait for it or choose another "
            "hydra.run.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _LOCKS[key] = fd
    return run_dir


@contextmanager
def atomic_write(path: str | os.PathLike, what: str = "file"):
    """Yield a binary file; when the block ends it is flushed, synced and renamed to `path`.

    Readers never see a half-written file: on failure the temp file is removed, an existing
    `path` is left as it was, and an OS error becomes a FinetuneError naming the path.
    """
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600 files; use the usual mode
            yield f
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"before-rename:{path.name}")
        os.replace(tmp_name, path)
        tmp_name = None
        fault_point(f"rename:{path.name}")
    except OSError as e:
        raise FinetuneError(f"cannot write {what} {path}: {e.strerror or e}; check the folder is writable and has room") from None
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def write_bytes_atomic(path: str | os.PathLike, data: bytes, what: str = "file") -> Path:
    with atomic_write(path, what) as f:
        f.write(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    return write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), "json")
