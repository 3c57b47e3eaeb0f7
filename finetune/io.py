"""Writing run outputs so that nothing is ever half-written: temp file in place, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from finetune.errors import FinetuneError


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
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as e:
        raise FinetuneError(f"cannot write {what} {path}: {e.strerror or e}; check the folder is writable") from e
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
