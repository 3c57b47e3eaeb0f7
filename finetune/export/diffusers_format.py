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
allocates any tensor data, so a corrupt or hostile file costs at most its own size.
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
# safetensors dtype name -> (numpy dtype or None for bfloat16, bytes per element)
_FLOAT_DTYPES = {"F16": ("<f2", 2), "BF16": (None, 2), "F32": ("<f4", 4), "F64": ("<f8", 8)}
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
    data = safetensors.numpy.save({key: arr}, metadata=check_metadata(metadata))
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


def _corrupt(path: Path, reason: str, hint: str = REEXPORT_HINT) -> DataError:
    return DataError(f"{path} is truncated or corrupt ({reason}); {hint}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_safetensors_header(
    path: Path, f, file_size: int, dtypes: dict | None = None, hint: str = REEXPORT_HINT
) -> tuple[dict[str, tuple[str, list[int], int, int]], dict[str, str], int]:
    """Read and validate the header of the open safetensors file `f` (positioned at 0).

    Returns ({name: (dtype, shape, begin, end)}, metadata, data_start). Every check that
    can be made without the tensor data is made here: the header length is plausible and
    inside the file, the header is a JSON object, metadata is str -> str, every tensor has
    a floating dtype, a shape of non-negative ints and offsets whose size matches the shape,
    and the tensors tile the data region exactly up to the end of the file.
    `dtypes` ({safetensors dtype: (numpy dtype, bytes per element)}) widens the accepted
    dtypes (default: floating point only); `hint` ends every error message.
    """
    table = _FLOAT_DTYPES if dtypes is None else dtypes
    if file_size < _HEADER_LEN_BYTES:
        raise DataError(f"{path} is not a safetensors file ({file_size} bytes, too short); {hint}")
    n = int.from_bytes(f.read(_HEADER_LEN_BYTES), "little")
    if n > _MAX_HEADER_BYTES:
        raise DataError(f"{path} is not a safetensors file (header length {n} is implausible); {hint}")
    if _HEADER_LEN_BYTES + n > file_size:
        raise DataError(
            f"{path} is truncated or not a safetensors file (header says {n} bytes, file has {file_size}); "
            f"{hint}"
        )
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = " ".join(str(e).split())
        raise DataError(f"{path} is not a safetensors file (header is not JSON: {reason}); {hint}") from e
    if not isinstance(header, dict):
        raise DataError(f"{path} is not a safetensors file (header is not a JSON object); {hint}")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise DataError(f"{path} has a corrupt safetensors header ('__metadata__' is not a str -> str map); {hint}")

    entries: dict[str, tuple[str, list[int], int, int]] = {}
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise DataError(f"{path} has a corrupt safetensors header (entry {name!r}); {hint}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in table:
            what = "embedding vectors must be floating point" if dtypes is None else "expected one of"
            raise DataError(f"{path}: tensor {name!r} has dtype {dtype}; {what} ({', '.join(sorted(table))})")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise DataError(f"{path} has a corrupt safetensors header (shape {shape!r} of {name!r}); {hint}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise DataError(f"{path} has a corrupt safetensors header (data_offsets {offsets!r} of {name!r}); {hint}")
        nbytes = int(np.prod(shape, dtype=object)) * table[dtype][1]
        if offsets[1] - offsets[0] != nbytes:
            raise _corrupt(path, f"tensor {name!r} of shape {shape} needs {nbytes} bytes, its offsets span {offsets[1] - offsets[0]}", hint)
        entries[name] = (dtype, list(shape), offsets[0], offsets[1])

    data_start = _HEADER_LEN_BYTES + n
    end = 0
    for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != end:
            raise _corrupt(path, f"tensor {name!r} starts at byte {begin} of the data, expected {end}", hint)
        end = stop
    if data_start + end != file_size:
        have = file_size - data_start
        if have < end:
            raise _corrupt(path, f"the header needs {end} bytes of tensor data, the file has {have}", hint)
        raise _corrupt(path, f"{have - end} unexpected bytes after the tensor data", hint)
    return entries, metadata, data_start


def _decode(buf: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    np_dtype, _ = _FLOAT_DTYPES[dtype]
    if np_dtype is None:  # bfloat16 is the top half of a float32 (numpy has no bfloat16 dtype)
        u16 = np.frombuffer(buf, dtype="<u2").astype(np.uint32)
        return (u16 << 16).view(np.float32).reshape(shape)
    return np.frombuffer(buf, dtype=np_dtype).reshape(shape).astype(np.float32)


def read_safetensors(path: str | os.PathLike, what: str = "embedding file") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a safetensors file as float32 (header fully validated first).

    Returns ({name: float32 array}, metadata). Raises MissingFileError if the file does not
    exist and DataError (one line, naming the file) if it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist; check the path")
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            entries, metadata, data_start = read_safetensors_header(path, f, size)
            f.seek(data_start)
            data = f.read(size - data_start)
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if len(data) != size - data_start:  # the file shrank while we read it
        raise _corrupt(path, "the file changed while it was read")
    tensors = {name: _decode(data[begin:end], dtype, shape) for name, (dtype, shape, begin, end) in entries.items()}
    return tensors, metadata


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
