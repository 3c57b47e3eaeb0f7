"""The one validated reader (finetune/safefiles.py) and everything that reads through it: no input,
however damaged or hostile, raises anything but the project's error type.

The fuzz test feeds every reader FINETUNE_FUZZ_N (default 2,000) seeded inputs: mutations of valid
files (bit flips, truncation, splices, header rewrites) and generated headers (deep nesting, wrong
types, huge numbers). `FINETUNE_FUZZ_N=10000 pytest -n 0 tests/test_safefiles.py -k fuzz` is the
long run (docs: README, "Damaged and hostile files").
"""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from finetune.errors import DataError, FinetuneError
from finetune.safefiles import (
    ALL_DTYPES, MAX_TENSOR_BYTES, SafetensorsReader, describe_path, dump_safetensors, parse_json, read_json,
)

FUZZ_N = int(os.environ.get("FINETUNE_FUZZ_N", "2000"))


def header_file(header, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def valid_embedding() -> bytes:
    return dump_safetensors({"<cat>": np.arange(8, dtype=np.float32).reshape(2, 4)}, {"steps": "3"})


# ----------------------------------------------------------------------------- the crashers of issue 15

CRASHERS = {
    "nested_100k": header_file(b"[" * 100_000 + b"]" * 100_000),
    "nested_object": header_file(b'{"a":' * 5000 + b"1" + b"}" * 5000),
    "dtype_list": header_file({"x": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "dtype_dict": header_file({"x": {"dtype": {"a": 1}, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "int_5000_digits": header_file(b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,' + b"9" * 5000 + b"]}}"),
    "float_offsets": header_file({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.0]}}, b"\0" * 4),
    "bool_shape": header_file({"x": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4),
    "nan_constant": header_file(b'{"x":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}', b"\0" * 4),
    "huge_exponent": header_file(b'{"__metadata__":{"a":"b"},"x":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}}'),
    "header_2_62": struct.pack("<Q", 2**62) + b"{}",
    "zero_bytes": b"",
    "not_utf8": header_file(b"\xff\xfe{}"),
    "metadata_list": header_file({"__metadata__": ["a"]}),
    "metadata_int_value": header_file({"__metadata__": {"a": 1}}),
    "entry_string": header_file({"x": "F32"}),
    "header_array": header_file([1, 2]),
    "huge_shape": header_file({"x": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 4]}}, b"\0" * 4),
    "overlap": header_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                            "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "trailing": valid_embedding() + b"x",
    "truncated": valid_embedding()[:-3],
}


def readers(tmp_path):
    """Every reader of safetensors / JSON input, as name -> fn(path) (each also reads the tensors)."""
    from finetune.convert.readers import SafetensorsFile
    from finetune.export.diffusers_format import load_diffusers_embedding
    from finetune.export.formats import load_any
    from finetune.training.checkpoints import check_checkpoint

    def safefile(path):
        reader = SafetensorsReader(path, dtypes=ALL_DTYPES)
        reader.read_all()
        reader.verify(required=False)

    def convert_file(path):
        f = SafetensorsFile(path)
        for name in f.shapes():
            if f.entries[name][0] in ("F16", "BF16", "F32", "F64"):
                f.read(name)

    def checkpoint(path):
        folder = tmp_path / "ckpt"
        folder.mkdir(exist_ok=True)
        os.replace(path, folder / "state.safetensors")
        (folder / "meta.json").write_text('{"step": 1}')
        check_checkpoint(folder)

    def meta(path):
        folder = tmp_path / "meta"
        folder.mkdir(exist_ok=True)
        os.replace(path, folder / "meta.json")
        from finetune.training.checkpoints import read_meta

        read_meta(folder)

    return {
        "safefiles.SafetensorsReader": safefile,
        "export.load_any": lambda p: load_any(p),
        "export.load_diffusers_embedding": load_diffusers_embedding,
        "convert.SafetensorsFile": convert_file,
        "training.check_checkpoint": checkpoint,
        "safefiles.read_json": lambda p: read_json(p, expect=None),
        "training.read_meta": meta,
    }


def _call(fn, path):
    """None if `fn` succeeded or raised the project's error; else the unexpected exception."""
    try:
        fn(path)
    except FinetuneError:
        return None
    except Exception as e:  # noqa: BLE001 - this is what the test looks for
        return e
    return None


@pytest.mark.parametrize("name", sorted(CRASHERS))
def test_saved_crashers_are_one_data_error(tmp_path, name):
    path = tmp_path / "x.safetensors"
    failures = {}
    for reader, fn in readers(tmp_path).items():
        path.write_bytes(CRASHERS[name])
        error = _call(fn, path)
        if error is not None:
            failures[reader] = repr(error)[:200]
    assert failures == {}
    path.write_bytes(CRASHERS[name])
    if name != "trailing" and name != "truncated":
        with pytest.raises(DataError):
            SafetensorsReader(path, dtypes=ALL_DTYPES).read_all()


def mutations(rng: np.random.Generator, seeds: list[bytes]):
    """Seeded stream of damaged or hostile files."""
    kinds = ("flip", "truncate", "splice", "header", "random", "json")
    while True:
        kind = kinds[rng.integers(len(kinds))]
        base = bytearray(seeds[rng.integers(len(seeds))])
        if kind == "flip" and base:
            for _ in range(rng.integers(1, 8)):
                i = rng.integers(len(base))
                base[i] ^= 1 << rng.integers(8)
            yield bytes(base)
        elif kind == "truncate":
            yield bytes(base[: rng.integers(len(base) + 1)])
        elif kind == "splice":
            other = seeds[rng.integers(len(seeds))]
            cut = rng.integers(len(base) + 1)
            yield bytes(base[:cut]) + other[rng.integers(len(other) + 1):]
        elif kind == "header":
            yield header_file(_random_json(rng, 0), rng.bytes(int(rng.integers(0, 64))))
        elif kind == "random":
            yield rng.bytes(int(rng.integers(0, 200)))
        else:  # valid header shape with hostile values
            value = _random_json(rng, 0)
            header = {"t": {"dtype": rng.choice(["F32", "F16", "BF16", "I64", "X"]) if rng.random() < 0.7 else value,
                            "shape": [int(rng.integers(0, 4))] if rng.random() < 0.5 else value,
                            "data_offsets": [0, int(rng.integers(0, 20))] if rng.random() < 0.5 else value}}
            if rng.random() < 0.3:
                header["__metadata__"] = value
            yield header_file(header, rng.bytes(int(rng.integers(0, 20))))


def _random_json(rng, depth):
    choice = rng.integers(9 if depth < 4 else 5)
    if choice == 0:
        return int(rng.integers(-2**62, 2**62)) * (10 ** int(rng.integers(0, 30)))
    if choice == 1:
        return float(rng.normal()) * 10 ** float(rng.integers(-5, 5))
    if choice == 2:
        return "F32" if rng.random() < 0.5 else rng.bytes(4).hex()
    if choice == 3:
        return None if rng.random() < 0.5 else bool(rng.random() < 0.5)
    if choice == 4:
        return []
    if choice in (5, 6):
        return [_random_json(rng, depth + 1) for _ in range(rng.integers(0, 4))]
    return {str(rng.integers(3)): _random_json(rng, depth + 1) for _ in range(rng.integers(0, 4))}


def fuzz_seeds() -> list[bytes]:
    seeds = [valid_embedding(), dump_safetensors({"emb_params": np.ones((1, 8), np.float16)}),
             dump_safetensors({"a": np.zeros((2, 2), np.float32), "b": np.arange(3, dtype=np.int64)}, checksum=True),
             json.dumps({"step": 3, "fingerprint": "ab"}).encode()]
    return seeds + [CRASHERS[k] for k in ("dtype_list", "int_5000_digits", "overlap")]


def fuzz(tmp_path, reader: str, n: int) -> tuple[int, list]:
    fn = readers(tmp_path)[reader]
    rng = np.random.default_rng(sum(map(ord, reader)))  # seeded per reader
    path = tmp_path / "fuzz.safetensors"
    failures, count = [], 0
    for data in mutations(rng, fuzz_seeds()):
        if count >= n:
            break
        path.write_bytes(data)
        error = _call(fn, path)
        if error is not None:
            failures.append((data[:120], repr(error)[:200]))
        count += 1
    return count, failures


@pytest.mark.parametrize("reader", ["safefiles.SafetensorsReader", "export.load_any", "export.load_diffusers_embedding",
                                    "convert.SafetensorsFile", "training.check_checkpoint", "safefiles.read_json",
                                    "training.read_meta"])
def test_fuzz_every_reader_raises_only_the_project_error(tmp_path, reader):
    count, failures = fuzz(tmp_path, reader, FUZZ_N)
    print(f"fuzz {reader}: {count} inputs, {len(failures)} unexpected exceptions")
    assert count == FUZZ_N
    assert failures == []


def test_round_trip_and_checksum_detects_a_flipped_bit(tmp_path):
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, 2], np.int64)}
    data = dump_safetensors(tensors, {"z": "1", "a": "2"}, checksum=True)
    assert data == dump_safetensors(dict(reversed(tensors.items())), {"a": "2", "z": "1"}, checksum=True)
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    reader = SafetensorsReader(path, dtypes=ALL_DTYPES)
    reader.verify()
    np.testing.assert_array_equal(reader.read("b"), tensors["b"])
    np.testing.assert_array_equal(reader.read("a", as_float32=False), tensors["a"])
    from safetensors.numpy import load_file  # the reference library reads our bytes

    assert {k: v.tolist() for k, v in load_file(str(path)).items()} == {k: v.tolist() for k, v in tensors.items()}
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    path.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="sha256"):
        SafetensorsReader(path, dtypes=ALL_DTYPES).verify()


def test_8gb_declared_tensor_is_refused_before_reading(tmp_path):
    """A sparse 8 GB file whose header matches its size: refused by every reader, in a process whose
    address space is limited to 1 GB (so reading it at once could not even be tried)."""
    count = 2 * 2**30  # float32 elements: 8 GiB
    header = header_file({"<big>": {"dtype": "F32", "shape": [count], "data_offsets": [0, 4 * count]}})
    path = tmp_path / "big.safetensors"
    with path.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + 4 * count)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))\n"
        "from finetune.errors import DataError\n"
        "from finetune.safefiles import SafetensorsReader\n"
        "from finetune.export.diffusers_format import load_diffusers_embedding\n"
        "refused = 0\n"
        "for fn in (lambda p: SafetensorsReader(p).read_all(), load_diffusers_embedding):\n"
        "    try:\n"
        "        fn(sys.argv[1])\n"
        "    except DataError as e:\n"
        "        refused += 'bytes' in str(e)\n"
        "print(refused)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "2", out.stderr[-2000:]
    assert 4 * count > MAX_TENSOR_BYTES


def test_json_limits_and_escaped_names(tmp_path):
    with pytest.raises(DataError, match="nested"):
        parse_json("[" * 1000 + "]" * 1000, "x")
    with pytest.raises(DataError, match="digits"):
        parse_json("[" + "1" * 5000 + "]", "x")
    assert parse_json('{"a": [1, 2.5, "x]"]}', "x") == {"a": [1, 2.5, "x]"]}
    bad = tmp_path / "bad\nerror: fake.json"
    bad.write_text("[")
    with pytest.raises(DataError) as e:
        read_json(bad)
    assert "\n" not in str(e.value) and "bad\\nerror: fake.json" in str(e.value)
    assert describe_path("a\x1b[31mb") == "a\\x1b[31mb"
