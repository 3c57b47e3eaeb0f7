"""OpenAI CLIP's own tokenizer, as the reference the tests compare `ClipTokenizer` against.

`simple_tokenizer.py` and `bpe_simple_vocab_16e6.txt.gz` are taken from the
`openai-clip==1.0.1` sdist on PyPI, downloaded once with pip into a cache folder
(env var FINETUNE_TEST_CACHE, default ~/.cache/finetune-tests) and never committed.

Use the `clip_reference` fixture: it returns a function that gives the reference
`SimpleTokenizer` or skips the calling test with the reason ("needs the network ..."); CI sets
FINETUNE_REQUIRE_ALL=1, which turns that skip into a failure (tests/conftest.py).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

PACKAGE = "openai-clip"
VERSION = "1.0.1"
SDIST = f"openai-clip-{VERSION}.tar.gz"
# sha256 of the two files inside openai-clip-1.0.1.tar.gz (as published on PyPI).
FILES = {
    "simple_tokenizer.py": "d1b09f10ed3d1e2c343619cb98cbfacb92363dd8607526a43aa7fe2d60d15bad",
    "bpe_simple_vocab_16e6.txt.gz": "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
}
DOWNLOAD_TIMEOUT_S = 600


class ReferenceUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("FINETUNE_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "finetune-tests")
    return Path(root)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _have_files(folder: Path) -> bool:
    return all((folder / name).is_file() and _sha256(folder / name) == digest for name, digest in FILES.items())


def _download_sdist(download_dir: Path) -> Path:
    download_dir.mkdir(parents=True, exist_ok=True)
    sdist = download_dir / SDIST
    if sdist.is_file():
        return sdist
    cmd = [
        sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}",
        "--no-deps", "--no-binary", ":all:", "-d", str(download_dir),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ReferenceUnavailable(f"`{' '.join(cmd)}` did not finish: {err}") from err
    if proc.returncode != 0 or not sdist.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ReferenceUnavailable(f"`{' '.join(cmd)}` failed (exit code {proc.returncode}):\n{tail}")
    return sdist


def _extract(sdist: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as tar:
        for name in FILES:
            member = tar.getmember(f"openai-clip-{VERSION}/clip/{name}")
            data = tar.extractfile(member).read()
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, folder / name)  # atomic, so parallel test runs never see half a file


@functools.lru_cache(maxsize=1)
def _load():
    """Returns the reference `SimpleTokenizer`, or the error message why it is unavailable."""
    folder = cache_dir() / f"openai-clip-{VERSION}"
    try:
        if not _have_files(folder):
            _extract(_download_sdist(cache_dir() / "downloads"), folder)
            if not _have_files(folder):
                raise ReferenceUnavailable(
                    f"files extracted from {SDIST} into {folder} do not have the expected sha256; delete the folder and retry"
                )
        spec = importlib.util.spec_from_file_location("openai_clip_simple_tokenizer", folder / "simple_tokenizer.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.SimpleTokenizer(str(folder / "bpe_simple_vocab_16e6.txt.gz"))
    except Exception as err:  # any failure: report it in the tests that need the reference
        return (
            f"OpenAI CLIP reference tokenizer unavailable ({type(err).__name__}): {err}\n"
            f"It is downloaded once from PyPI ({PACKAGE}=={VERSION} sdist) into {cache_dir()} "
            "(set FINETUNE_TEST_CACHE to change the folder)."
        )


def get_reference():
    """The reference `SimpleTokenizer`; skips the calling test (a failure in CI) if it cannot be had."""
    ref = _load()
    if isinstance(ref, str):
        pytest.skip(f"needs the network (PyPI) or a cached copy: {ref}")
    return ref


@pytest.fixture(scope="session")
def clip_reference():
    """A function returning OpenAI CLIP's `SimpleTokenizer` (call it inside the test body,
    so that an unavailable reference skips that test instead of erroring its setup)."""
    return get_reference
