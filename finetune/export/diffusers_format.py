"""The diffusers textual-inversion file (`learned_embeds.safetensors`), and the strict
safetensors reader/writer every safetensors embedding format of `finetune.export.formats` shares.

Format (what diffusers' `load_textual_inversion` reads from a safetensors file): exactly
one tensor, named by the placeholder token string (e.g. "<cat-toy>"), holding the learned
embedding vectors as [num_vectors, D] (D = 768 for SD v1); a 1-D [D] tensor is read as
one vector. File layout (safetensors spec, github.com/huggingface/safetensors): 8-byte
little-endian header length N, N bytes of JSON header (per tensor: dtype, shape,
data_offsets relative to the end of the header; optional "__metadata__" str->str map),
then the raw little-endian data, which the tensors must cover exactly (no holes, nothing after).

`read_safetensors` checks the whole header against the file size before it reads or
allocates any tensor data (`finetune.safefiles`), so a corrupt or hostile file is one
DataError. Written by `finetune.safefiles.dump_safetensors` (sorted: deterministic bytes; no torch).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from finetune.errors import DataError
from finetune.io import write_bytes_atomic
from finetune.safefiles import SafetensorsReader, dump_safetensors

DEFAULT_FILENAME = "learned_embeds.safetensors"
REEXPORT_HINT = "re-export the embedding"


# ----------------------------------------------------------------------------- writing


def check_vectors(vectors, name: str, path) -> np.ndarray:
    """`vectors` as a C-contiguous float32 [num_vectors, D] array ([D] counts as one vector).

    Raises ValueError for a wrong shape, a non-float dtype or non-finite values."""
    arr = np.asarray(vectors)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"vectors must be [num_vectors, D], got shape {np.shape(vectors)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"vectors must be floating point, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"refusing to save non-finite (NaN/inf) embedding vectors for {name!r} to {path}")
    return arr


def check_metadata(metadata: dict | None) -> dict[str, str] | None:
    """safetensors metadata is a str -> str map; anything else is a TypeError."""
    if not metadata:
        return None
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata keys and values must be str; convert these keys: {bad}")
    return dict(metadata)


def save_single_tensor(path, key: str, vectors, metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a safetensors file holding one float32 tensor named `key`."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"tensor name must be a non-empty string, got {key!r}")
    if key == "__metadata__":
        raise ValueError("the tensor name cannot be '__metadata__' (reserved by the safetensors format)")
    arr = check_vectors(vectors, key, path)
    data = dump_safetensors({key: arr}, check_metadata(metadata))  # sorted: the same vectors give the same bytes
    return write_bytes_atomic(path, data, "embedding")


def save_diffusers_embedding(
    path: str | os.PathLike,
    placeholder: str,
    vectors: np.ndarray,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `vectors` ([num_vectors, D], or [D] for one vector) as float32 under the name
    `placeholder`. The write is atomic (temp file in the same folder, then os.replace) and
    the parent folder is created. Returns the path written. An OS error while writing
    becomes a FinetuneError naming the path; the previous file (if any) is left intact."""
    if not isinstance(placeholder, str) or not placeholder:
        raise ValueError(f"placeholder must be a non-empty string, got {placeholder!r}")
    return save_single_tensor(path, placeholder, vectors, metadata)


# ----------------------------------------------------------------------------- reading


# Largest embedding file read (SD v1 with 75 vectors is 230 kB): a bigger one is refused unread.
MAX_EMBEDDING_BYTES = 256 * 2**20


def read_safetensors(path: str | os.PathLike, what: str = "embedding file") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a safetensors file as float32 (header fully validated first, by
    `finetune.safefiles.SafetensorsReader`: bounded size, nesting and numbers, typed fields).

    Returns ({name: float32 array}, metadata). Raises MissingFileError if the file does not
    exist and DataError (one line, naming the file) if it cannot be used."""
    reader = SafetensorsReader(path, hint=REEXPORT_HINT, what=what, max_file_bytes=MAX_EMBEDDING_BYTES)
    return reader.read_all(), dict(reader.metadata)


def as_vectors(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    """A loaded tensor as float32 [num_vectors, D]; [D] counts as one vector."""
    if array.ndim not in (1, 2):
        raise DataError(f"{path}: tensor {name!r} has shape {list(array.shape)}; expected [num_vectors, D] or [D]")
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise DataError(f"{path}: tensor {name!r} is empty (shape {list(array.shape)})")
    return np.ascontiguousarray(array)


def load_diffusers_embedding(path: str | os.PathLike) -> tuple[str, np.ndarray, dict[str, str]]:
    """Read a diffusers textual-inversion safetensors file.

    Returns (placeholder, vectors float32 [num_vectors, D], metadata). Raises
    MissingFileError if the file does not exist and DataError if it cannot be used.
    """
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    if len(tensors) != 1:
        names = sorted(tensors)[:5]
        raise DataError(
            f"{path} holds {len(tensors)} tensors {names}; a diffusers textual-inversion file holds exactly one, "
            "named by the placeholder token"
        )
    (placeholder, array), = tensors.items()
    return placeholder, as_vectors(path, placeholder, array), metadata
