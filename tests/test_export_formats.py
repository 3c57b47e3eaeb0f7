"""Embedding formats for diffusers, AUTOMATIC1111, ComfyUI and kohya-ss (finetune/export/formats.py).

The expected layouts are the facts documented in that module's docstring (from the tools'
sources). Only the `.pt` write/read round trips need torch; everything else runs without it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from finetune.errors import ConfigError, DataError, FinetuneError, MissingFileError
from finetune.export.diffusers_format import save_diffusers_embedding
from finetune.export.formats import (
    FORMATS,
    check_formats,
    detect_format,
    export_embedding,
    file_safe_name,
    load_any,
)

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDER = "<cat-toy>"
NAME = "cat-toy"
META = {"placeholder": PLACEHOLDER, "preset": "tiny", "steps": "42"}
SAFETENSORS_FORMATS = ["diffusers", "a1111_safetensors", "kohya"]
# AUTOMATIC1111 modules/safe.py: the zip records and pickle globals its checker allows for a .pt.
A1111_ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
A1111_GLOBALS = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage"}


def _vectors(n=2, d=768, seed=0):
    # Include values whose bits a lossy path would change: subnormals, -0.0, extremes.
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    v[0, :4] = [np.float32(1e-45), -0.0, np.finfo(np.float32).max, np.finfo(np.float32).tiny]
    return v


def _own(metadata: dict) -> dict:
    """A file's metadata without kohya's `modelspec.*` keys (test_kohya_modelspec_metadata checks those)."""
    return {k: v for k, v in metadata.items() if not k.startswith("modelspec.")}


def _raw_header(path: Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def _one_line_error(info) -> str:
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- safetensors formats


@pytest.mark.parametrize("fmt", SAFETENSORS_FORMATS)
def test_safetensors_round_trip_bit_exact(tmp_path, fmt):
    vec = _vectors(3)
    path = FORMATS[fmt].save(tmp_path / "out", PLACEHOLDER, vec, META)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    emb = load_any(path)
    assert emb.format == fmt == detect_format(path)
    assert emb.vectors.dtype == np.float32 and emb.vectors.tobytes() == vec.tobytes()
    assert _own(emb.metadata) == META
    assert emb.name == (PLACEHOLDER if fmt == "diffusers" else NAME)
    assert FORMATS[fmt].load(path).vectors.tobytes() == vec.tobytes()


def test_key_layouts_and_file_names(tmp_path):
    vec = _vectors(2, 16)
    paths = export_embedding(tmp_path, PLACEHOLDER, vec, META, SAFETENSORS_FORMATS)
    # diffusers: {placeholder: [n, D]} in learned_embeds.safetensors
    assert paths["diffusers"] == tmp_path / "diffusers" / "learned_embeds.safetensors"
    # AUTOMATIC1111 / ComfyUI: the file stem is the prompt word; one tensor, here named like the stem
    assert paths["a1111_safetensors"] == tmp_path / "a1111_safetensors" / f"{NAME}.safetensors"
    # kohya-ss sd-scripts (SD v1): {"emb_params": [n, D]}
    assert paths["kohya"] == tmp_path / "kohya" / f"{NAME}.safetensors"
    for fmt, key in (("diffusers", PLACEHOLDER), ("a1111_safetensors", NAME), ("kohya", "emb_params")):
        header = _raw_header(paths[fmt])
        assert set(header) == {key, "__metadata__"}, fmt
        assert header[key]["dtype"] == "F32" and header[key]["shape"] == [2, 16]
        assert _own(header["__metadata__"]) == META
        (loaded,) = safetensors.numpy.load_file(paths[fmt]).values()  # the reference reader agrees
        assert loaded.tobytes() == vec.tobytes()


def test_save_to_explicit_file_and_1d_vectors(tmp_path):
    p = FORMATS["kohya"].save(tmp_path / "my-vectors.safetensors", "x", np.arange(8, dtype=np.float64))
    assert p == tmp_path / "my-vectors.safetensors"
    emb = load_any(p)
    assert emb.format == "kohya" and emb.name == "my-vectors" and emb.vectors.shape == (1, 8)


def test_file_safe_name():
    assert file_safe_name("<cat-toy>") == "cat-toy"
    assert file_safe_name("my concept/../x") == "myconcept..x"
    assert file_safe_name("..hidden.") == "hidden"
    assert file_safe_name("<猫>") == "猫"
    with pytest.raises(ConfigError, match="no characters usable"):
        file_safe_name("<>")
    with pytest.raises(ConfigError, match="export.formats"):
        check_formats(["kohya"], "<*>")
    assert check_formats(["diffusers"], "<*>") == ["diffusers"]  # diffusers keeps the token as is


def test_detection_by_keys(tmp_path):
    vec = _vectors(1, 8)
    # A single tensor whose name is not the stem is a diffusers file, whatever the file is called.
    p = save_diffusers_embedding(tmp_path / "anything.safetensors", "<tok>", vec)
    assert detect_format(p) == "diffusers" and load_any(p).name == "<tok>"
    p = tmp_path / "sdxl.safetensors"
    p.write_bytes(safetensors.numpy.save({"clip_l": vec, "clip_g": _vectors(1, 16)}))
    with pytest.raises(DataError, match="SDXL") as info:
        load_any(p)
    _one_line_error(info)
    p = tmp_path / "two.safetensors"
    p.write_bytes(safetensors.numpy.save({"a": vec, "b": vec}))
    with pytest.raises(DataError, match="2 entries"):
        load_any(p)
    with pytest.raises(DataError, match="kohya"):
        FORMATS["kohya"].load(save_diffusers_embedding(tmp_path / "d.safetensors", "<x>", vec))
    with pytest.raises(DataError, match="string_to_param"):
        FORMATS["a1111_pt"].load(tmp_path / "d.safetensors")
    (tmp_path / "e.txt").write_text("x")
    with pytest.raises(DataError, match="unknown embedding file type"):
        load_any(tmp_path / "e.txt")
    with pytest.raises(MissingFileError, match="nope.safetensors"):
        load_any(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("fmt", SAFETENSORS_FORMATS)
def test_truncated_safetensors_is_one_line_data_error(tmp_path, fmt):
    path = FORMATS[fmt].save(tmp_path, PLACEHOLDER, _vectors(2, 32), META)
    raw = path.read_bytes()
    for cut in (0, 5, 12, len(raw) - 100, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(DataError) as info:
            load_any(path)
        assert path.name in _one_line_error(info)
    path.write_bytes(raw + b"\0" * 4)  # trailing bytes are not allowed either (safetensors spec: no holes)
    with pytest.raises(DataError, match="unexpected bytes"):
        load_any(path)


def test_header_validated_before_reading_data(tmp_path):
    """A header that claims a huge tensor is refused from the file size alone."""
    header = json.dumps({"<a>": {"dtype": "F32", "shape": [1_000_000_000, 768], "data_offsets": [0, 3_072_000_000_000]}})
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 64)
    with pytest.raises(DataError, match="needs 3072000000000 bytes") as info:
        load_any(p)
    _one_line_error(info)
    header = json.dumps({"<a>": {"dtype": "F32", "shape": [1, 4], "data_offsets": [0, 8]}})  # size mismatch
    p.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 8)
    with pytest.raises(DataError, match="needs 16 bytes"):
        load_any(p)
    header = json.dumps({"__metadata__": {"step": 3}, "<a>": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}})
    p.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 8)
    with pytest.raises(DataError, match="__metadata__"):
        load_any(p)


# ----------------------------------------------------------------------------- pickles: safety


class _Evil:
    """Unpickling this creates a file: stands for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_files(tmp_path: Path) -> list[Path]:
    payload = pickle.dumps({"string_to_param": {"*": _Evil(tmp_path / "pwned")}}, protocol=2)
    raw = tmp_path / "evil_raw.pt"  # a bare pickle
    raw.write_bytes(payload)
    zipped = tmp_path / "evil_zip.pt"  # laid out like torch.save's zip, the payload as data.pkl
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as z:
        z.writestr("evil_zip/data.pkl", payload)
        z.writestr("evil_zip/version", "3\n")
    return [raw, zipped]


def test_pickle_refused_by_default(tmp_path):
    for evil in _evil_files(tmp_path):
        for call in (load_any, detect_format, FORMATS["a1111_pt"].load):
            with pytest.raises(DataError) as info:
                call(evil)
            msg = _one_line_error(info)
            assert str(evil) in msg and "allow_pickle=True" in msg and "arbitrary code" in msg
    with pytest.raises(DataError, match="--allow-pickle"):
        load_any(tmp_path / "evil_raw.pt", opt_in="--allow-pickle")
    assert not (tmp_path / "pwned").exists()


def test_malicious_pickle_refused_even_when_allowed(tmp_path):
    files = _evil_files(tmp_path)
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe), protocol=2)).close()
    assert probe.exists()  # the payload is real: plain unpickling runs it
    for evil in files:
        with pytest.raises(FinetuneError) as info:
            load_any(evil, allow_pickle=True)
        msg = _one_line_error(info)
        assert str(evil) in msg
        try:
            import torch  # noqa: F401
        except ImportError:
            assert "finetune[torch]" in msg  # without torch nothing is unpickled at all
        else:
            assert isinstance(info.value, DataError) and "weights_only=True" in msg
    assert not (tmp_path / "pwned").exists()


def test_missing_torch_is_a_clear_error(tmp_path, monkeypatch):
    import finetune.export.formats as formats

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(FinetuneError, match=r"finetune\[torch\]") as info:
        FORMATS["a1111_pt"].save(tmp_path, PLACEHOLDER, _vectors(1, 8))
    _one_line_error(info)
    assert not any(tmp_path.iterdir())
    (tmp_path / "x.pt").write_bytes(b"whatever")
    with pytest.raises(FinetuneError, match=r"finetune\[torch\]"):
        load_any(tmp_path / "x.pt", allow_pickle=True)
    monkeypatch.setattr(formats, "torch_available", lambda: False)
    with pytest.raises(ConfigError, match=r"export.formats.*finetune\[torch\]"):
        check_formats(["diffusers", "a1111_pt"], PLACEHOLDER)
    with pytest.raises(ConfigError, match="unknown format"):
        check_formats(["diffusers", "a1111"])


# ----------------------------------------------------------------------------- .pt (needs torch)


def test_a1111_pt_round_trip_and_layout(tmp_path):
    torch = pytest.importorskip("torch", reason="needs torch: pip install -e '.[torch]' (or .[parity])")
    vec = _vectors(3)
    path = FORMATS["a1111_pt"].save(tmp_path, PLACEHOLDER, vec, META)
    assert path == tmp_path / f"{NAME}.pt"
    emb = load_any(path, allow_pickle=True)
    assert (emb.format, emb.name) == ("a1111_pt", NAME)
    assert emb.vectors.dtype == np.float32 and emb.vectors.tobytes() == vec.tobytes()
    assert emb.metadata == {"name": PLACEHOLDER, "step": "42"}  # the name it was made with, as webui keeps it

    # The dict AUTOMATIC1111's Embedding.save writes, read the way ComfyUI reads it.
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert data["string_to_token"] == {"*": 265}
    assert list(data["string_to_param"]) == ["*"]
    t = data["string_to_param"]["*"]
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and tuple(t.shape) == (3, 768)
    assert t.numpy().tobytes() == vec.tobytes()
    assert data["name"] == PLACEHOLDER and data["step"] == 42
    assert data["sd_checkpoint"] is None and data["sd_checkpoint_name"] is None

    # What AUTOMATIC1111's safe loader (modules/safe.py) accepts: zip record names and pickle globals.
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert all(A1111_ZIP_NAMES.match(n) for n in names), names
        (pkl,) = [n for n in names if n.endswith("/data.pkl")]
        globals_ = {arg for op, arg, _ in pickletools.genops(z.read(pkl)) if op.name == "GLOBAL"}
    assert globals_ <= A1111_GLOBALS, globals_
    # Same vectors, same bytes (fixed zip timestamps).
    assert FORMATS["a1111_pt"].save(tmp_path / "cat-toy-again.pt", PLACEHOLDER, vec, META).read_bytes() == path.read_bytes()

    # A kohya-style .pt and a diffusers .bin (both torch pickles) are read too, with the same rules.
    torch.save({"emb_params": torch.from_numpy(vec)}, tmp_path / "k.pt")
    torch.save({PLACEHOLDER: torch.from_numpy(vec)}, tmp_path / "learned_embeds.bin")
    assert load_any(tmp_path / "k.pt", allow_pickle=True).format == "kohya"
    emb = load_any(tmp_path / "learned_embeds.bin", allow_pickle=True)
    assert (emb.format, emb.name) == ("diffusers", PLACEHOLDER) and emb.vectors.tobytes() == vec.tobytes()

    # A truncated .pt is a one-line DataError.
    raw = path.read_bytes()
    for cut in (0, 10, len(raw) // 2, len(raw) - 30):
        path.write_bytes(raw[:cut])
        with pytest.raises(DataError) as info:
            load_any(path, allow_pickle=True)
        assert str(path) in _one_line_error(info)


# ----------------------------------------------------------------------------- training config


def test_train_config_has_export_defaults():
    from tests.conftest import compose_train

    cfg = compose_train("model=tiny")
    assert cfg.export.formats == ["diffusers"] and cfg.export.allow_pickle is False
    cfg = compose_train("model=tiny", "export.formats=[diffusers,a1111_safetensors,kohya]")
    assert check_formats(cfg.export.formats, cfg.token.placeholder) == ["diffusers", "a1111_safetensors", "kohya"]


def test_training_run_writes_configured_formats(tmp_path):
    from finetune.training.run import train
    from tests.conftest import FAST, compose_train

    cfg = compose_train(*FAST, "trainer.max_steps=1", "trainer.batch_size=1", "data.crops_per_image=1",
                        "token.placeholder='<cat-toy>'", "export.formats=[diffusers,a1111_safetensors,kohya]")
    train(cfg, tmp_path)
    reference = load_any(tmp_path / "learned_embeds.safetensors")
    assert reference.name == PLACEHOLDER
    written = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "export").rglob("*") if p.is_file())
    assert written == ["export/a1111_safetensors/cat-toy.safetensors", "export/kohya/cat-toy.safetensors"]
    for rel in written:
        emb = load_any(tmp_path / rel)
        assert emb.vectors.tobytes() == reference.vectors.tobytes() and _own(emb.metadata) == reference.metadata

    bad = compose_train(*FAST, "export.formats=[diffusers,webui]")
    with pytest.raises(ConfigError, match="export.formats"):
        train(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before any work


# ----------------------------------------------------------------------------- the CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "finetune.export", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_converts_and_back(tmp_path):
    vec = _vectors(2)
    src = save_diffusers_embedding(tmp_path / "learned_embeds.safetensors", PLACEHOLDER, vec, META)
    proc = _cli(src, "--to", "kohya,a1111_safetensors", "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    kohya = tmp_path / "out" / "kohya" / f"{NAME}.safetensors"
    assert f"wrote kohya: {kohya}" in proc.stdout
    assert set(_raw_header(kohya)) == {"emb_params", "__metadata__"}
    proc = _cli(kohya, "--to", "diffusers", "--out", tmp_path / "back", "--name", PLACEHOLDER, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    back = load_any(tmp_path / "back" / "diffusers" / "learned_embeds.safetensors")
    assert back.name == PLACEHOLDER and back.vectors.tobytes() == vec.tobytes()


def test_cli_a1111_pt_round_trip(tmp_path):
    pytest.importorskip("torch", reason="needs torch: pip install -e '.[torch]' (or .[parity])")
    vec = _vectors(2)
    src = save_diffusers_embedding(tmp_path / "learned_embeds.safetensors", PLACEHOLDER, vec, META)
    proc = _cli(src, "--to", "a1111_pt,kohya", "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pt = tmp_path / "out" / "a1111_pt" / f"{NAME}.pt"
    assert pt.is_file() and (tmp_path / "out" / "kohya" / f"{NAME}.safetensors").is_file()
    _assert_user_error(_cli(pt, "--to", "diffusers", "--out", tmp_path / "back", cwd=tmp_path),
                       str(pt), "--allow-pickle")
    assert not (tmp_path / "back").exists()
    proc = _cli(pt, "--to", "diffusers", "--out", tmp_path / "back", "--allow-pickle", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    back = load_any(tmp_path / "back" / "diffusers" / "learned_embeds.safetensors")
    assert back.name == PLACEHOLDER and back.vectors.tobytes() == vec.tobytes()  # the .pt's name field


def test_cli_user_errors(tmp_path):
    src = save_diffusers_embedding(tmp_path / "e.safetensors", PLACEHOLDER, _vectors(1, 8))
    _assert_user_error(_cli(tmp_path / "missing.safetensors", "--to", "kohya", "--out", tmp_path / "o", cwd=tmp_path),
                       "missing.safetensors", "does not exist")
    _assert_user_error(_cli(src, "--to", "kohya,webui", "--out", tmp_path / "o", cwd=tmp_path), "webui", "a1111_pt")
    _assert_user_error(_cli(src, "--out", tmp_path / "o", cwd=tmp_path), "--to")
    _assert_user_error(_cli(src, "--to", "kohya", "--out", tmp_path / "o", "--name", "<>", cwd=tmp_path), "<>")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(src.read_bytes()[:-3])
    _assert_user_error(_cli(truncated, "--to", "kohya", "--out", tmp_path / "o", cwd=tmp_path), str(truncated))
    _assert_user_error(_cli(_evil_files(tmp_path)[0], "--to", "kohya", "--out", tmp_path / "o", "--allow-pickle",
                            cwd=tmp_path), "evil_raw.pt")
    assert not (tmp_path / "o").exists() and not (tmp_path / "pwned").exists()


def _compose_evaluate(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from finetune.config import register_schemas

    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "finetune" / "configs"), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="evaluate", overrides=list(overrides)))


def test_evaluate_renders_with_an_embedding_from_another_tool(tmp_path):
    from finetune.evaluation.stage import evaluate_embedding
    from finetune.models.presets import get_preset

    width = get_preset("tiny").text_encoder.width
    kohya = FORMATS["kohya"].save(tmp_path / "from-kohya.safetensors", "x", _vectors(2, width), {})
    tiny_eval = ["model=tiny", "eval.num_steps=1", "eval.images_per_prompt=1", "eval.prompts=[\"a photo of {}\"]"]
    grid = evaluate_embedding(_compose_evaluate(f"embedding={kohya}", *tiny_eval), tmp_path / "eval")
    assert grid.is_file()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["placeholder"], metrics["embedding_format"], metrics["num_vectors"]) == ("from-kohya", "kohya", 2)

    pt = tmp_path / "x.pt"
    pt.write_bytes(b"not read")
    with pytest.raises(DataError, match="allow_pickle=true"):
        evaluate_embedding(_compose_evaluate(f"embedding={pt}", *tiny_eval), tmp_path / "eval2")
