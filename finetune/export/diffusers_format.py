"""The diffusers textual-inversion file (`learned_embeds.safetensors`).

Format (what diffusers' `load_textual_inversion` reads from a safetensors file): exactly
one tensor, named by the placeholder token string (e.g. "<cat-toy>"), holding the learned
embedding vectors as [num_vectors, D] (D = 768 for SD v1); a 1-D [D] tensor is read as
one vector. File layout (safetensors spec, github.com/huggingface/safetensors): 8-byte
little-endian header length N, N bytes of JSON header (per tensor: dtype, shape,
data_offsets; optional "__metadata__" str->str map), then the raw little-endian data.

Written with `safetensors.numpy` only (no torch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import safetensors.numpy

from finetune.errors import DataError, MissingFileError
from finetune.io import write_bytes_atomic

DEFAULT_FILENAME = "learned_embeds.safetensors"
_HEADER_LEN_BYTES = 8
# Guard against absurd header lengths before reading them (the safetensors library uses 100 MB).
_MAX_HEADER_BYTES = 100_000_000
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


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
    if placeholder == "__metadata__":
        raise ValueError("placeholder cannot be '__metadata__' (reserved by the safetensors format)")
    arr = np.asarray(vectors)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"vectors must be [num_vectors, D], got shape {np.shape(vectors)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"vectors must be floating point, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"refusing to save non-finite (NaN/inf) embedding vectors for {placeholder!r} to {path}")
    meta = None
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata keys and values must be str; convert these keys: {bad}")
        meta = dict(metadata)

    data = safetensors.numpy.save({placeholder: arr}, metadata=meta)

    return write_bytes_atomic(path, data, "embedding")


def _read_header(path: Path, raw: bytes) -> dict:
    size = len(raw)
    if size < _HEADER_LEN_BYTES:
        raise DataError(f"{path} is not a safetensors file ({size} bytes, too short); re-export the embedding")
    n = int.from_bytes(raw[:_HEADER_LEN_BYTES], "little")
    if n > _MAX_HEADER_BYTES:
        raise DataError(f"{path} is not a safetensors file (header length {n} is implausible); re-export the embedding")
    if _HEADER_LEN_BYTES + n > size:
        raise DataError(
            f"{path} is truncated or not a safetensors file (header says {n} bytes, file has {size}); "
            "re-export the embedding"
        )
    try:
        header = json.loads(raw[_HEADER_LEN_BYTES : _HEADER_LEN_BYTES + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not a safetensors file (header is not JSON: {e}); re-export the embedding") from e
    if not isinstance(header, dict):
        raise DataError(f"{path} is not a safetensors file (header is not a JSON object); re-export the embedding")
    return header


def _decode_bf16(buf: bytes, shape: list[int]) -> np.ndarray:
    """bfloat16 is the top half of a float32 (numpy has no bfloat16 dtype)."""
    u16 = np.frombuffer(buf, dtype="<u2").astype(np.uint32)
    return (u16 << 16).view(np.float32).reshape(shape)


def load_diffusers_embedding(path: str | os.PathLike) -> tuple[str, np.ndarray, dict[str, str]]:
    """Read a diffusers textual-inversion safetensors file.

    Returns (placeholder, vectors float32 [num_vectors, D], metadata). Raises
    MissingFileError if the file does not exist and DataError if it cannot be used.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"embedding file {path} does not exist; check the path")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read embedding file {path}: {e.strerror or e}") from e

    header = _read_header(path, raw)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise DataError(f"{path} has a corrupt safetensors header ('__metadata__' is not a map); re-export the embedding")
    metadata = {str(k): str(v) for k, v in metadata.items()}
    if len(header) != 1:
        names = sorted(header)[:5]
        raise DataError(
            f"{path} holds {len(header)} tensors {names}; a diffusers textual-inversion file holds exactly one, "
            "named by the placeholder token"
        )
    (placeholder, info), = header.items()
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise DataError(f"{path} has a corrupt safetensors header (entry {placeholder!r}); re-export the embedding")
    dtype, shape = info["dtype"], info["shape"]
    if dtype not in _FLOAT_DTYPES:
        raise DataError(
            f"{path}: tensor {placeholder!r} has dtype {dtype}; embedding vectors must be floating point "
            f"({', '.join(sorted(_FLOAT_DTYPES))})"
        )
    if not isinstance(shape, list) or len(shape) not in (1, 2):
        raise DataError(
            f"{path}: tensor {placeholder!r} has shape {shape}; expected [num_vectors, D] or [D]"
        )

    try:
        if dtype == "BF16":
            # safetensors.numpy cannot build a bfloat16 array; decode the raw bytes here.
            begin, end = (int(o) for o in info["data_offsets"])
            base = _HEADER_LEN_BYTES + int.from_bytes(raw[:_HEADER_LEN_BYTES], "little")
            if not 0 <= begin <= end <= len(raw) - base or end - begin != 2 * int(np.prod(shape)):
                raise ValueError("data offsets do not match the shape or the file size")
            array = _decode_bf16(raw[base + begin : base + end], shape)
        else:
            (array,) = safetensors.numpy.load(raw).values()
    except Exception as e:  # safetensors raises SafetensorError (not exported as a stable type) and others
        reason = " ".join(str(e).split())  # keep the message on one line
        raise DataError(f"{path} is truncated or corrupt ({reason}); re-export the embedding") from e

    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise DataError(f"{path}: tensor {placeholder!r} is empty (shape {list(array.shape)})")
    return placeholder, np.ascontiguousarray(array), metadata
