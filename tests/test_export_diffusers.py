import json
import os
import struct

import numpy as np
import pytest
import safetensors.numpy

from finetune.errors import DataError, FinetuneError, MissingFileError
from finetune.export.diffusers_format import load_diffusers_embedding, save_diffusers_embedding

PLACEHOLDER = "<cat-toy>"


def _vectors(n=2, d=768, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _raw_header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), n, raw


def test_round_trip_bit_exact_with_metadata(tmp_path):
    vec = _vectors()
    meta = {"initializer_token": "toy", "num_vectors": "2", "step": "3000"}
    out = save_diffusers_embedding(tmp_path / "out" / "learned_embeds.safetensors", PLACEHOLDER, vec, meta)
    assert out.is_file()
    assert os.listdir(tmp_path / "out") == ["learned_embeds.safetensors"]  # no temp file left
    name, loaded, loaded_meta = load_diffusers_embedding(out)
    assert name == PLACEHOLDER
    assert loaded.dtype == np.float32
    assert np.array_equal(loaded, vec)
    assert loaded_meta == meta


def test_raw_header_layout(tmp_path):
    path = save_diffusers_embedding(tmp_path / "e.safetensors", PLACEHOLDER, _vectors(3, 16), {"k": "v"})
    header, n, raw = _raw_header(path)
    assert set(header) == {PLACEHOLDER, "__metadata__"}
    entry = header[PLACEHOLDER]
    assert entry["dtype"] == "F32"
    assert entry["shape"] == [3, 16]
    begin, end = entry["data_offsets"]
    assert end - begin == 3 * 16 * 4 == len(raw) - 8 - n
    assert header["__metadata__"] == {"k": "v"}


def test_float64_and_1d_inputs_saved_as_float32(tmp_path):
    p = save_diffusers_embedding(tmp_path / "a.safetensors", "<x>", np.arange(8, dtype=np.float64))
    name, vec, meta = load_diffusers_embedding(p)
    assert name == "<x>" and vec.shape == (1, 8) and vec.dtype == np.float32 and meta == {}


def test_one_dimensional_file_accepted(tmp_path):
    p = tmp_path / "one.safetensors"
    p.write_bytes(safetensors.numpy.save({"<y>": np.ones(8, np.float16)}))
    name, vec, _ = load_diffusers_embedding(p)
    assert name == "<y>" and vec.shape == (1, 8) and vec.dtype == np.float32


def test_bf16_file_decoded(tmp_path):
    values = np.array([[1.0, -2.5, 0.15625, 3.0]], np.float32)  # exactly representable in bfloat16
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"<z>": {"dtype": "BF16", "shape": [1, 4], "data_offsets": [0, 8]}}).encode()
    p = tmp_path / "bf16.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + bf16.tobytes())
    name, vec, _ = load_diffusers_embedding(p)
    assert name == "<z>" and np.array_equal(vec, values)


def test_truncated_file(tmp_path):
    p = save_diffusers_embedding(tmp_path / "t.safetensors", PLACEHOLDER, _vectors())
    raw = p.read_bytes()
    for cut in (4, 20, len(raw) - 10):
        p.write_bytes(raw[:cut])
        with pytest.raises(DataError) as info:
            load_diffusers_embedding(p)
        msg = str(info.value)
        assert "t.safetensors" in msg and "\n" not in msg


def test_random_bytes(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="junk.safetensors"):
        load_diffusers_embedding(p)
    # A plausible header length followed by non-JSON.
    p.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 16)
    with pytest.raises(DataError, match="not JSON"):
        load_diffusers_embedding(p)


def test_two_tensors(tmp_path):
    p = tmp_path / "two.safetensors"
    p.write_bytes(safetensors.numpy.save({"<a>": _vectors(1, 8), "<b>": _vectors(1, 8)}))
    with pytest.raises(DataError, match="2 tensors"):
        load_diffusers_embedding(p)


def test_wrong_dtype_and_rank(tmp_path):
    p = tmp_path / "int.safetensors"
    p.write_bytes(safetensors.numpy.save({"<a>": np.ones((1, 8), np.int32)}))
    with pytest.raises(DataError, match="I32"):
        load_diffusers_embedding(p)
    p.write_bytes(safetensors.numpy.save({"<a>": np.ones((1, 2, 8), np.float32)}))
    with pytest.raises(DataError, match="shape"):
        load_diffusers_embedding(p)


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="nope.safetensors"):
        load_diffusers_embedding(tmp_path / "nope.safetensors")
    assert issubclass(MissingFileError, FinetuneError)


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        save_diffusers_embedding(tmp_path / "a.safetensors", "", _vectors())
    with pytest.raises(ValueError):
        save_diffusers_embedding(tmp_path / "a.safetensors", "<a>", np.ones((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        save_diffusers_embedding(tmp_path / "a.safetensors", "<a>", np.full((1, 4), np.nan, np.float32))
    with pytest.raises(TypeError):
        save_diffusers_embedding(tmp_path / "a.safetensors", "<a>", _vectors(), {"step": 3})
    assert not any(tmp_path.iterdir())


def test_unusable_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FinetuneError, match="file"):
        save_diffusers_embedding(tmp_path / "file" / "e.safetensors", PLACEHOLDER, _vectors())


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    p = save_diffusers_embedding(tmp_path / "e.safetensors", PLACEHOLDER, _vectors(seed=1))
    before = p.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(FinetuneError, match="e.safetensors"):
        save_diffusers_embedding(p, PLACEHOLDER, _vectors(seed=2))
    assert os.listdir(tmp_path) == ["e.safetensors"]
    assert p.read_bytes() == before
