"""Validated readers (and a deterministic writer) for every safetensors and JSON file the project reads.

One public bottom-layer module that `convert/`, `export/` and `training/checkpoints` all call,
so a corrupt or hostile file costs at most a bounded amount of work and memory and ends in a
`DataError` (one line naming the file), never another exception:

- the header length is bounded (`MAX_HEADER_BYTES`) and checked against the file size before
  anything is allocated; its JSON nesting is bounded (`MAX_JSON_DEPTH`), integers are bounded
  (`MAX_INT_DIGITS`, no 5,000-digit offsets), NaN/Infinity are refused;
- every field is type-checked (dtype a known string, shape a list of non-negative ints,
  data_offsets two ints tiling the data region exactly up to the end of the file);
- a reader has a cap on the file size and on each tensor's size; tensors are read one at a time;
- `sha256` of the data region can be kept in the header metadata (`CHECKSUM_KEY`, written by
  `dump_safetensors(..., checksum=True)`) and is verified on load in bounded memory.

The writer sorts tensor names and metadata keys, so the same tensors give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from finetune.errors import DataError, MissingFileError

HEADER_LEN_BYTES = 8
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
MAX_JSON_DEPTH = 64  # safetensors headers are 3 levels deep; configs a handful
MAX_INT_DIGITS = 20  # any offset or size fits in 2**64
MAX_JSON_BYTES = 64 * 2**20
MAX_TENSOR_BYTES = 2**30  # SD v1's largest weight (the token table) is 152 MB in float32
CHECKSUM_KEY = "sha256"  # header metadata key: sha256 of the data region
_CHUNK = 1 << 20

# safetensors dtype name -> (numpy dtype, or None for bfloat16, bytes per element)
FLOAT_DTYPES = {"F16": ("<f2", 2), "BF16": (None, 2), "F32": ("<f4", 4), "F64": ("<f8", 8)}
ALL_DTYPES = {
    **FLOAT_DTYPES,
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1), "U8": ("u1", 1), "BOOL": ("?", 1),
}  # fmt: skip
_NUMPY_TO_DTYPE = {"float16": "F16", "float32": "F32", "float64": "F64", "int64": "I64", "int32": "I32",
                   "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
DEFAULT_HINT = "re-export or re-download the file"


def describe_path(path) -> str:
    """A file name safe to print on one line: control characters (a newline that would forge a
    second `error:` line, terminal escapes) are shown escaped."""
    text = str(path)
    if text.isprintable():
        return text
    return repr(text)[1:-1]


# ----------------------------------------------------------------------------- bounded JSON


class _JsonRefused(ValueError):
    pass


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _JsonRefused(f"an integer of {len(text)} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > 64:
        raise _JsonRefused(f"a number of {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):
        raise _JsonRefused(f"the number {text[:20]} is out of range")
    return value


def _refuse_constant(text: str):
    raise _JsonRefused(f"{text} is not JSON")


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in `text` (strings skipped), without recursion."""
    skeleton = np.frombuffer(_STRING.sub("", text).encode("utf-8", "replace"), dtype=np.uint8)
    if skeleton.size == 0:
        return 0
    step = np.zeros(skeleton.shape, np.int64)
    step[(skeleton == ord("[")) | (skeleton == ord("{"))] = 1
    step[(skeleton == ord("]")) | (skeleton == ord("}"))] = -1
    return int(np.cumsum(step).max(initial=0))


def parse_json(raw: bytes | str, where: str, max_depth: int = MAX_JSON_DEPTH):
    """JSON text -> value, bounded: nesting depth, integer digits, finite numbers. DataError otherwise."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        depth = json_depth(text)
        if depth > max_depth:
            raise _JsonRefused(f"nested {depth} levels deep, more than {max_depth}")
        return json.loads(text, parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        reason = " ".join(str(e).split())[:200]
        raise DataError(f"{where} is not JSON ({reason})") from None


def read_json(path, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES, expect: type | None = dict):
    """Read a JSON file: bounded size and nesting, and of type `expect` (None: any). DataError or
    MissingFileError (one line naming the file) if it cannot be used."""
    path = Path(path)
    name = describe_path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise DataError(f"{what} {name} is {size} bytes, more than the {max_bytes} bytes allowed")
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise MissingFileError(f"{what} {name} does not exist; check the path") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {name}: {e.strerror or e}") from None
    if len(raw) > max_bytes:
        raise DataError(f"{what} {name} is more than the {max_bytes} bytes allowed")
    value = parse_json(raw, f"{what} {name}")
    if expect is not None and not isinstance(value, expect):
        raise DataError(f"{what} {name} holds a JSON {type(value).__name__}, expected a JSON {expect.__name__}")
    return value


# ----------------------------------------------------------------------------- safetensors


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class SafetensorsReader:
    """A safetensors file with a validated header. `read(name)` loads one tensor, `read_all()` all,
    `verify()` checks the stored checksum; each read is bounded by `max_tensor_bytes`.

    `dtypes` ({name: (numpy dtype, bytes)}) are the dtypes accepted in the header (default: floating
    point); `hint` ends every error message; `max_file_bytes` refuses larger files before reading.
    """

    def __init__(self, path, *, dtypes: dict | None = None, hint: str = DEFAULT_HINT, what: str = "file",
                 max_file_bytes: int | None = None, max_tensor_bytes: int = MAX_TENSOR_BYTES):
        self.path, self.hint, self.what = Path(path), hint, what
        self.name = describe_path(self.path)
        self.dtypes = FLOAT_DTYPES if dtypes is None else dtypes
        self.max_tensor_bytes = max_tensor_bytes
        try:
            with self.path.open("rb") as f:
                self.size = os.fstat(f.fileno()).st_size
                if max_file_bytes is not None and self.size > max_file_bytes:
                    raise DataError(f"{what} {self.name} is {self.size} bytes, more than the {max_file_bytes} "
                                    f"bytes allowed for it; {hint}")
                self.entries, self.metadata, self.data_start = self._header(f)
        except FileNotFoundError:
            raise MissingFileError(f"{what} {self.name} does not exist; check the path") from None
        except IsADirectoryError:
            raise DataError(f"{what} {self.name} is a folder, not a safetensors file") from None
        except OSError as e:
            raise DataError(f"cannot read {what} {self.name}: {e.strerror or e}") from None

    def _bad(self, reason: str) -> DataError:
        return DataError(f"{self.name} is truncated or not a valid safetensors file ({reason}); {self.hint}")

    def _header(self, f):
        if self.size < HEADER_LEN_BYTES:
            raise self._bad(f"{self.size} bytes, too short")
        n = int.from_bytes(f.read(HEADER_LEN_BYTES), "little")
        if n > MAX_HEADER_BYTES:
            raise self._bad(f"header length {n} is implausible")
        if HEADER_LEN_BYTES + n > self.size:
            raise self._bad(f"header says {n} bytes, the file has {self.size}")
        raw = f.read(n)
        if len(raw) != n:
            raise self._bad("the file changed while it was read")
        try:
            header = parse_json(raw, "the header")
        except DataError as e:
            raise self._bad(str(e)) from None
        if not isinstance(header, dict):
            raise self._bad("the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._bad("'__metadata__' is not a str -> str map")
        entries: dict[str, tuple[str, list[int], int, int]] = {}
        for name, info in header.items():
            shown = describe_path(name)[:80]
            if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
                raise self._bad(f"entry {shown!r} is not a tensor description")
            dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
            if not isinstance(dtype, str):
                raise self._bad(f"dtype of {shown!r} is a {type(dtype).__name__}, not a name")
            if dtype not in self.dtypes:
                raise DataError(f"{self.name}: tensor {shown!r} has dtype {describe_path(dtype)[:20]}; expected one of "
                                f"{', '.join(sorted(self.dtypes))}")
            if not isinstance(shape, list) or len(shape) > 8 or not all(_is_int(s) and s >= 0 for s in shape):
                raise self._bad(f"shape of {shown!r} is not a list of sizes")
            if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                    or not 0 <= offsets[0] <= offsets[1]):
                raise self._bad(f"data_offsets of {shown!r} are not two ordered offsets")
            nbytes = math.prod(shape) * self.dtypes[dtype][1]
            if offsets[1] - offsets[0] != nbytes:
                raise self._bad(f"tensor {shown!r} of shape {shape} needs {nbytes} bytes, its offsets span "
                                f"{offsets[1] - offsets[0]}")
            entries[name] = (dtype, list(shape), offsets[0], offsets[1])
        data_start = HEADER_LEN_BYTES + n
        end = 0
        for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
            if begin != end:
                raise self._bad(f"tensor {describe_path(name)[:80]!r} starts at byte {begin} of the data, expected {end}")
            end = stop
        have = self.size - data_start
        if have < end:
            raise self._bad(f"the header needs {end} bytes of tensor data, the file has {have}")
        if have > end:
            raise self._bad(f"{have - end} unexpected bytes after the tensor data")
        return entries, metadata, data_start

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(shape) for name, (_, shape, _, _) in self.entries.items()}

    def read(self, name: str, as_float32: bool = True) -> np.ndarray:
        """One tensor (float32 if `as_float32` and it is floating point), read on its own."""
        dtype, shape, begin, end = self.entries[name]
        if end - begin > self.max_tensor_bytes:
            raise DataError(f"{self.name}: tensor {describe_path(name)[:80]!r} declares {end - begin} bytes, more "
                            f"than the {self.max_tensor_bytes} bytes allowed for one tensor; {self.hint}")
        try:
            with self.path.open("rb") as f:
                f.seek(self.data_start + begin)
                data = f.read(end - begin)
        except OSError as e:
            raise DataError(f"cannot read {self.what} {self.name}: {e.strerror or e}") from None
        if len(data) != end - begin:
            raise self._bad("the file changed while it was read")
        return decode_tensor(data, dtype, shape, self.dtypes, as_float32)

    def read_all(self, as_float32: bool = True) -> dict[str, np.ndarray]:
        return {name: self.read(name, as_float32) for name in self.entries}

    def data_sha256(self) -> str:
        """sha256 of the data region, read in chunks (bounded memory)."""
        digest = hashlib.sha256()
        try:
            with self.path.open("rb") as f:
                f.seek(self.data_start)
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
        except OSError as e:
            raise DataError(f"cannot read {self.what} {self.name}: {e.strerror or e}") from None
        return digest.hexdigest()

    def verify(self, required: bool = True) -> None:
        """Compare the data region with the checksum in the header metadata (DataError on mismatch;
        a missing checksum is an error when `required`)."""
        stored = self.metadata.get(CHECKSUM_KEY)
        if stored is None:
            if required:
                raise self._bad(f"no '{CHECKSUM_KEY}' checksum in its metadata")
            return
        if self.data_sha256() != stored:
            raise self._bad("its tensor data does not match the stored sha256 checksum")


def decode_tensor(buf: bytes, dtype: str, shape: list[int], dtypes: dict = ALL_DTYPES, as_float32: bool = True) -> np.ndarray:
    """Raw little-endian bytes of a safetensors tensor -> a numpy array (float32 for floating dtypes
    when `as_float32`; bfloat16 always becomes float32, numpy has no bfloat16)."""
    np_dtype, _ = dtypes[dtype]
    if np_dtype is None:  # bfloat16 is the top half of a float32
        u16 = np.frombuffer(buf, dtype="<u2").astype(np.uint32)
        return (u16 << 16).view(np.float32).reshape(shape)
    array = np.frombuffer(buf, dtype=np_dtype).reshape(shape)
    if as_float32 and dtype in FLOAT_DTYPES:
        return array.astype(np.float32)
    return array.copy()


def dump_safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
                     checksum: bool = False) -> bytes:
    """The safetensors bytes of `tensors` (numpy arrays): names and metadata keys sorted, so the same
    tensors and metadata always give the same bytes; `checksum` stores the data region's sha256."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        array = np.asarray(tensors[name])
        dtype = _NUMPY_TO_DTYPE.get(array.dtype.name)
        if dtype is None:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}, which safetensors files here do not hold")
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    body = b"".join(chunks)
    meta = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise TypeError("safetensors metadata keys and values must be str")
    if checksum:
        meta[CHECKSUM_KEY] = hashlib.sha256(body).hexdigest()
    if meta:
        header["__metadata__"] = dict(sorted(meta.items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(HEADER_LEN_BYTES, "little") + text + body
