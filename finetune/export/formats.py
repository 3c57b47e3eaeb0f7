"""Every embedding file format users need, written and read both ways.

All formats hold the same thing: the learned vectors, float32 [num_vectors, D] (D = 768
for SD v1). What each tool expects (read from the tools' sources; no code copied):

diffusers (`"diffusers"`, `learned_embeds.safetensors`)
    A safetensors file with one tensor named by the placeholder token: `{"<cat-toy>": [n, D]}`
    (see `finetune.export.diffusers_format`). `pipe.load_textual_inversion(path)` reads it
    and registers the tensor name as the token. A `.bin` is the same dict, torch-pickled.

AUTOMATIC1111 `.pt` (`"a1111_pt"`, `<name>.pt`)
    A torch pickle of a dict, as `Embedding.save` in stable-diffusion-webui
    `modules/textual_inversion/textual_inversion.py` writes it:
    `{"string_to_token": {"*": 265}, "string_to_param": {"*": tensor [n, D]}, "name": name,
    "step": int or None, "sd_checkpoint": None, "sd_checkpoint_name": None}`.
    `EmbeddingDatabase.load_from_file` uses the file stem as the prompt word (not the
    `name` field), takes the single entry of `string_to_param`, and reads `step`,
    `sd_checkpoint`, `sd_checkpoint_name` with `.get`. `create_embedding` makes the file
    name from the name by keeping only `isalnum()` characters and "._- ".
    Webui's `modules/safe.py` checks a `.pt` before `torch.load`: the zip may only hold
    `<dir>/data.pkl`, `<dir>/data/<n>` and `<dir>/version`, and the pickle may only name
    `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `torch.FloatStorage` (and a
    few others). Recent torch adds `byteorder`, `.format_version`, `.storage_alignment`
    and `.data/serialization_id` records, which that check rejects, so `save` repacks
    torch's zip keeping only the three record kinds (torch.load reads it as before).
    ComfyUI `comfy/sd1_clip.py` `load_embed` reads the same file with
    `torch.load(..., weights_only=True)` and takes `next(iter(string_to_param.values()))`.

AUTOMATIC1111 / ComfyUI safetensors (`"a1111_safetensors"`, `<name>.safetensors`)
    A safetensors file with a single tensor. Webui loads `.safetensors` with
    `safetensors.torch.load_file` and, without `string_to_param`, takes the one tensor of
    any name ("diffuser concepts"); the prompt word is again the file stem. ComfyUI
    (`embedding:<name>` in the prompt) takes `string_to_param`, else the `clip_l` key,
    else the first tensor. This project names the tensor by the file-safe name, so the
    key equals the file stem; that is how `detect_format` tells it from a diffusers file.

kohya-ss sd-scripts (`"kohya"`, `<name>.safetensors`)
    `train_textual_inversion.py` `save_weights` writes `{"emb_params": [n, D]}` (SD v1; SDXL
    uses `clip_l`/`clip_g`, not supported here) to safetensors with its metadata;
    `load_weights` (`--weights`) takes the first tensor of a safetensors file, or
    `string_to_param` / the first value of a torch pickle; training on with it needs
    `--num_vectors_per_token` equal to the file's n. Webui and ComfyUI load it too. The metadata
    holds the Stability AI ModelSpec keys sd-scripts writes for a textual inversion
    (`library/sai_model_spec.py`): `modelspec.sai_model_spec` "1.0.1", `modelspec.architecture`
    "stable-diffusion-v1/textual-inversion", `modelspec.implementation` (Stability AI's
    generative-models URL, as sd-scripts gives textual inversions), `modelspec.title`,
    `modelspec.resolution` "<W>x<H>", `modelspec.date` (ISO 8601, seconds),
    `modelspec.prediction_type` "epsilon".

Trigger words. AUTOMATIC1111 and ComfyUI trigger an embedding on its file stem, matched as
CLIP token ids in the prompt: a stem that is one word of CLIP's vocabulary ("concept", id 6353)
would pull the embedding into every prompt using that word. Writing such a file is refused
(`check_formats` before a run, `EmbeddingFormat.save` at the write). This project writes its
placeholder into every file it exports (safetensors metadata `placeholder`; the `.pt`'s `name`,
where webui keeps the name an embedding was created with), and `trigger_placeholder` reads it
back, so `finetune.evaluate` uses the run's own word for every format.

Safety: `.pt/.pth/.ckpt/.bin` files are pickles, and unpickling can run arbitrary code.
They are refused unless the caller opts in (`allow_pickle=True`; config key
`export.allow_pickle` / `allow_pickle`, CLI flag `--allow-pickle`), and even then are read
only with `torch.load(path, map_location="cpu", weights_only=True)`, which accepts tensors
and plain containers and rejects any other object. torch is optional
(`pip install ".[torch]"`); reading or writing `.pt` without it is a one-line error.
Safetensors headers are validated before any tensor data is read (see
`diffusers_format.read_safetensors`); every write is atomic (`finetune.io`).
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from finetune.errors import ConfigError, DataError, FinetuneError, MissingFileError
from finetune.export.diffusers_format import (
    DEFAULT_FILENAME,
    as_vectors,
    check_vectors,
    read_safetensors,
    save_single_tensor,
)
from finetune.io import write_bytes_atomic
from finetune.tokens.tokenizer import trigger_word, vocabulary_id

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
DEFAULT_OPT_IN = "allow_pickle=True"
TORCH_EXTRA = "pip install 'finetune[torch]' (from a checkout: pip install -e '.[torch]')"
# What AUTOMATIC1111 writes into every embedding (textual_inversion.py, Embedding.save).
A1111_STRING_TO_TOKEN = {"*": 265}
KOHYA_KEY = "emb_params"
# The ModelSpec metadata sd-scripts writes into an SD v1 textual inversion (library/sai_model_spec.py).
MODELSPEC = {
    "modelspec.sai_model_spec": "1.0.1",
    "modelspec.architecture": "stable-diffusion-v1/textual-inversion",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    "modelspec.prediction_type": "epsilon",
}
DEFAULT_RESOLUTION = 512  # SD v1's, what sd-scripts writes when it is not told
SDXL_KEYS = ("clip_l", "clip_g")
# webui modules/safe.py, allowed_zip_names_re: the only records a .pt zip may hold there.
_A1111_ZIP_RECORD = re.compile(r"^[^/]+/(data\.pkl|version|data/\d+)$")


@dataclass
class Embedding:
    """Learned vectors read from a file: `name` is the token the tool would use (the tensor
    name for diffusers, the file stem for AUTOMATIC1111 / ComfyUI / kohya)."""

    name: str
    vectors: np.ndarray  # float32 [num_vectors, D]
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = "diffusers"


def file_safe_name(name: str) -> str:
    """`name` reduced to characters safe in a file name and a prompt word: letters, digits,
    '.', '_', '-' (AUTOMATIC1111's create_embedding also keeps spaces; ComfyUI splits prompt
    words on spaces, so they go too). `<cat-toy>` -> `cat-toy`."""
    safe = trigger_word(name)
    if not safe:
        raise ConfigError(
            f"embedding name {name!r} has no characters usable in a file name (letters, digits, '.', '_', '-'); "
            "choose another name"
        )
    return safe


# ----------------------------------------------------------------------------- torch / pickles


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def import_torch(purpose: str):
    try:
        import torch
    except ImportError as e:
        raise FinetuneError(f"{purpose} needs PyTorch, which is not installed: {TORCH_EXTRA}") from e
    return torch


def _one_line(e: BaseException) -> str:
    """The informative part of a (torch) error message, on one line without terminal escapes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # torch's weights_only refusal says what it refused on a line of its own
    reason = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("WeightsUnpickler error:")), None)
    if reason is None:
        reason = lines[0] if lines else type(e).__name__
        reason = reason.split(". ")[0].rstrip(".")  # torch appends paragraphs of advice
    reason = reason.split(". Please use")[0].rstrip(".")
    if len(reason) < 20 and type(e).__name__ not in reason:  # e.g. a bare KeyError id
        reason = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."


def is_pickle_path(path) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def _refuse_pickle(path: Path, opt_in: str) -> DataError:
    return DataError(
        f"{path} is a pickle file ({path.suffix}): unpickling can run arbitrary code, so it is refused by default; "
        f"if you trust its source, opt in with {opt_in} (it is then read with torch.load(weights_only=True), "
        "which accepts only tensors and plain containers), or use a .safetensors file"
    )


def torch_load(path: Path, allow_pickle: bool, opt_in: str, what: str = "embedding file",
                hint: str = "re-export the embedding", mmap: bool = False):
    """The only way this project unpickles anything: opted in, weights_only=True, on the CPU.
    `mmap=True` maps the file's tensors instead of reading them (large checkpoints)."""
    if not allow_pickle:
        raise _refuse_pickle(path, opt_in)
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist; check the path")
    torch = import_torch(f"reading {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise DataError(
                f"{path} was refused by torch.load(weights_only=True): it holds objects other than tensors and "
                f"plain containers ({_one_line(e)}); such a file can run code when unpickled, so it is not read"
            ) from e
        raise DataError(f"{path} is truncated or not a PyTorch file ({_one_line(e)}); {hint}") from e
    except Exception as e:  # torch raises RuntimeError, EOFError, zipfile errors, ... for damaged files
        raise DataError(f"{path} is truncated or not a PyTorch file ({_one_line(e)}); {hint}") from e


def _tensor_to_numpy(path: Path, key: str, value) -> np.ndarray:
    torch = import_torch(f"reading {path}")
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise DataError(f"{path}: tensor {key!r} has dtype {value.dtype}; embedding vectors must be floating point")
    return as_vectors(path, key, value.detach().to("cpu", torch.float32).contiguous().numpy().copy())


def _a1111_zip(raw: bytes) -> bytes:
    """torch's zip with only the records webui's safe loader accepts (see module docstring),
    stored uncompressed with a fixed timestamp so the same vectors give the same bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if _A1111_ZIP_RECORD.match(info.filename):
                dst.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), src.read(info))
    return out.getvalue()


def _step(metadata: dict[str, str]) -> int | None:
    for key in ("step", "steps"):
        value = metadata.get(key)
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
    return None


# ----------------------------------------------------------------------------- savers


def _save_diffusers(path: Path, name: str, vectors, metadata) -> Path:
    return save_single_tensor(path, name, vectors, metadata)


def _save_a1111_safetensors(path: Path, name: str, vectors, metadata) -> Path:
    return save_single_tensor(path, file_safe_name(name), vectors, metadata)


def modelspec_metadata(title: str, resolution: int | str | None = None, timestamp: float | None = None) -> dict[str, str]:
    """The `modelspec.*` keys sd-scripts writes into a textual inversion for SD v1: architecture,
    implementation, title, resolution ("WxH"), date (ISO 8601, local time, whole seconds), prediction type."""
    import datetime
    import time

    side = int(resolution) if resolution not in (None, "", "None") else DEFAULT_RESOLUTION
    when = datetime.datetime.fromtimestamp(int(time.time() if timestamp is None else timestamp))
    return {**MODELSPEC, "modelspec.title": title, "modelspec.resolution": f"{side}x{side}",
            "modelspec.date": when.isoformat()}


def _save_kohya(path: Path, name: str, vectors, metadata) -> Path:
    spec = modelspec_metadata(path.stem, metadata.get("resolution"))
    return save_single_tensor(path, KOHYA_KEY, vectors, {**spec, **metadata})


def _save_a1111_pt(path: Path, name: str, vectors, metadata) -> Path:
    safe = file_safe_name(name)
    arr = check_vectors(vectors, safe, path)
    torch = import_torch(f"writing {path} (AUTOMATIC1111 .pt)")
    data = {
        "string_to_token": dict(A1111_STRING_TO_TOKEN),
        "string_to_param": {"*": torch.from_numpy(arr.copy())},
        "name": name,  # as webui: the name it was created with; the file is named after its file-safe form
        "step": _step(metadata or {}),
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
    }
    buf = io.BytesIO()
    torch.save(data, buf)
    return write_bytes_atomic(path, _a1111_zip(buf.getvalue()), "embedding")


# ----------------------------------------------------------------------------- reading


@dataclass
class _Contents:
    """A file's tensors before they are given a format: from safetensors or a torch pickle."""

    path: Path
    kind: str  # "safetensors" | "pickle"
    tensors: dict  # safetensors: name -> float32 ndarray; pickle: the unpickled dict
    metadata: dict[str, str]


def _read(path, allow_pickle: bool, opt_in: str) -> _Contents:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        data = torch_load(path, allow_pickle, opt_in)
        if not isinstance(data, dict):
            raise DataError(f"{path} holds a {type(data).__name__}; an embedding file holds a dict")
        return _Contents(path, "pickle", data, {})
    if suffix == SAFETENSORS_SUFFIX:
        tensors, metadata = read_safetensors(path)
        return _Contents(path, "safetensors", tensors, metadata)
    if not path.exists():
        raise MissingFileError(f"embedding file {path} does not exist; check the path")
    raise DataError(
        f"{path}: unknown embedding file type {suffix or '(no extension)'!r}; "
        f"expected {SAFETENSORS_SUFFIX} or a torch pickle ({', '.join(PICKLE_SUFFIXES)})"
    )


def _single(c: _Contents, what: str) -> tuple[str, object]:
    if any(k in c.tensors for k in SDXL_KEYS):
        raise DataError(f"{c.path} is an SDXL embedding (clip_l/clip_g); this project uses SD v1 embeddings only")
    if len(c.tensors) != 1:
        raise DataError(f"{c.path} holds {len(c.tensors)} entries {sorted(map(str, c.tensors))[:5]}; {what} holds exactly one")
    (key, value), = c.tensors.items()
    return str(key), value


def _vectors(c: _Contents, key: str, value) -> np.ndarray:
    if c.kind == "pickle":
        return _tensor_to_numpy(c.path, key, value)
    return as_vectors(c.path, key, value)


def _detect(c: _Contents) -> str:
    if c.kind == "pickle" and "string_to_param" in c.tensors:
        return "a1111_pt"
    key, _ = _single(c, "an embedding file")
    if key == KOHYA_KEY:
        return "kohya"
    if c.kind == "safetensors" and key == c.path.stem:
        return "a1111_safetensors"
    return "diffusers"


def _as_diffusers(c: _Contents) -> Embedding:
    key, value = _single(c, "a diffusers textual-inversion file")
    return Embedding(key, _vectors(c, key, value), dict(c.metadata), "diffusers")


def _as_a1111_safetensors(c: _Contents) -> Embedding:
    key, value = _single(c, "an AUTOMATIC1111 embedding file")
    return Embedding(c.path.stem, _vectors(c, key, value), dict(c.metadata), "a1111_safetensors")


def _as_kohya(c: _Contents) -> Embedding:
    key, value = _single(c, "a kohya-ss embedding file")
    if key != KOHYA_KEY:
        raise DataError(f"{c.path} holds the tensor {key!r}; a kohya-ss SD v1 embedding holds {KOHYA_KEY!r}")
    return Embedding(c.path.stem, _vectors(c, key, value), dict(c.metadata), "kohya")


def _as_a1111_pt(c: _Contents) -> Embedding:
    if c.kind != "pickle" or "string_to_param" not in c.tensors:
        raise DataError(f"{c.path} has no 'string_to_param'; it is not an AUTOMATIC1111 .pt embedding")
    params = c.tensors["string_to_param"]
    if not isinstance(params, dict) or len(params) != 1:
        count = len(params) if isinstance(params, dict) else type(params).__name__
        raise DataError(f"{c.path}: 'string_to_param' holds {count} entries; an embedding file holds exactly one")
    (key, value), = params.items()
    metadata = {k: str(c.tensors[k]) for k in ("name", "step", "sd_checkpoint", "sd_checkpoint_name")
                if isinstance(c.tensors.get(k), (str, int)) and not isinstance(c.tensors.get(k), bool)}
    return Embedding(c.path.stem, _vectors(c, str(key), value), metadata, "a1111_pt")


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class EmbeddingFormat:
    key: str
    suffix: str  # of the files it writes
    description: str  # which tools read it
    needs_torch: bool
    trigger_is_stem: bool  # the tools that read it write the file stem in prompts (AUTOMATIC1111, ComfyUI)
    _save: Callable = field(repr=False)
    _interpret: Callable = field(repr=False)
    default_filename: Callable[[str], str] = field(repr=False)

    def path_for(self, path_dir_or_file, name: str) -> Path:
        """A path with this format's suffix is the file; anything else is a folder to put
        `default_filename(name)` in."""
        p = Path(path_dir_or_file)
        if p.suffix.lower() == self.suffix and not p.is_dir():
            return p
        return p / self.default_filename(name)

    def save(self, path_dir_or_file, name: str, vectors, metadata: dict[str, str] | None = None) -> Path:
        """Write `vectors` ([num_vectors, D]) as this format; returns the file written (atomically)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"embedding name must be a non-empty string, got {name!r}")
        path = self.path_for(path_dir_or_file, name)
        if self.trigger_is_stem:
            check_trigger_stem(path.stem, self.key, what=f"{path.name} (named after {name!r})")
        return self._save(path, name, vectors, dict(metadata or {}))

    def load(self, path, *, allow_pickle: bool = False, opt_in: str = DEFAULT_OPT_IN) -> Embedding:
        """Read `path` as this format (a DataError if its layout is another one)."""
        return self._interpret(_read(path, allow_pickle, opt_in))


FORMATS: dict[str, EmbeddingFormat] = {
    "diffusers": EmbeddingFormat(
        "diffusers", SAFETENSORS_SUFFIX, "diffusers pipe.load_textual_inversion", False, False,
        _save_diffusers, _as_diffusers, lambda name: DEFAULT_FILENAME,
    ),
    "a1111_pt": EmbeddingFormat(
        "a1111_pt", ".pt", "AUTOMATIC1111 / ComfyUI embeddings folder (torch pickle)", True, True,
        _save_a1111_pt, _as_a1111_pt, lambda name: f"{file_safe_name(name)}.pt",
    ),
    "a1111_safetensors": EmbeddingFormat(
        "a1111_safetensors", SAFETENSORS_SUFFIX, "AUTOMATIC1111 / ComfyUI embeddings folder", False, True,
        _save_a1111_safetensors, _as_a1111_safetensors, lambda name: f"{file_safe_name(name)}.safetensors",
    ),
    "kohya": EmbeddingFormat(
        "kohya", SAFETENSORS_SUFFIX, "kohya-ss sd-scripts (--weights); AUTOMATIC1111 / ComfyUI too", False, True,
        _save_kohya, _as_kohya, lambda name: f"{file_safe_name(name)}.safetensors",
    ),
}


def detect_format(path, *, allow_pickle: bool = False, opt_in: str = DEFAULT_OPT_IN) -> str:
    """The FORMATS key of an embedding file, from its extension and its keys. Reading a
    pickle's keys means unpickling it, so the pickle rules apply."""
    return _detect(_read(path, allow_pickle, opt_in))


def load_any(path, *, allow_pickle: bool = False, opt_in: str = DEFAULT_OPT_IN) -> Embedding:
    """Read an embedding file of any supported format (read once, then detected)."""
    contents = _read(path, allow_pickle, opt_in)
    return _INTERPRET[_detect(contents)](contents)


_INTERPRET = {key: fmt._interpret for key, fmt in FORMATS.items()}


def check_formats(formats, name: str | None = None, key: str = "export.formats") -> list[str]:
    """Validate a list of format keys before any work is done: known keys, torch installed
    for `.pt`, a file-safe name for the formats named after it. Returns them deduplicated."""
    if isinstance(formats, str):
        formats = [formats]
    wanted = list(dict.fromkeys(str(f).strip() for f in formats))
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown:
        raise ConfigError(f"{key}: unknown format(s) {unknown}; choose from {list(FORMATS)}")
    if any(FORMATS[f].needs_torch for f in wanted) and not torch_available():
        raise ConfigError(f"{key}: writing a1111_pt needs PyTorch, which is not installed: {TORCH_EXTRA}")
    if name is not None and any(f != "diffusers" for f in wanted):
        try:
            stem = file_safe_name(name)
            for f in wanted:
                if FORMATS[f].trigger_is_stem:
                    check_trigger_stem(stem, f, what=f"the file name of {name!r}")
        except ConfigError as e:
            raise ConfigError(f"{key}={wanted}: {e}") from None
    return wanted


def check_trigger_stem(stem: str, fmt: str, what: str = "the file name") -> None:
    """Refuse a file stem that is one word of CLIP's vocabulary for a format whose tools trigger on the stem."""
    token = vocabulary_id(stem)
    if token is not None:
        raise ConfigError(
            f"{what}: {fmt} files trigger on their file name in AUTOMATIC1111 / ComfyUI, and {stem!r} is a word of the "
            f"CLIP vocabulary (id {token}), so every prompt with that word would pull the embedding in; "
            f"use a name that is not a word, such as '<my-{stem}>'"
        )


def _usable_placeholder(word) -> bool:
    """A word this project's tokenizer accepts as a placeholder: one visible word that is not a CLIP word."""
    if not isinstance(word, str) or not word.strip() or any(c.isspace() for c in word):
        return False
    return vocabulary_id(word) is None and bool(trigger_word(word) or word.strip("<>"))


def trigger_placeholder(embedding: Embedding) -> str:
    """The word that stands for `embedding` in this project's prompts (`finetune.evaluate`).

    1. The `placeholder` this project writes into the metadata of every safetensors file it exports;
    2. an AUTOMATIC1111 `.pt`'s `name` field, when the file is named after it (this project writes
       the placeholder there, as webui writes the name an embedding was created with);
    3. else what the tools use: the tensor name (diffusers) or the file stem (AUTOMATIC1111 /
       ComfyUI / kohya), wrapped in `<...>` when it is a CLIP word (a placeholder cannot be one).
    Never raises: every file `load_any` reads gets a usable placeholder.
    """
    metadata = embedding.metadata or {}
    candidate = metadata.get("placeholder")
    if _usable_placeholder(candidate):
        return candidate
    name = metadata.get("name")
    if embedding.format == "a1111_pt" and _usable_placeholder(name) and trigger_word(name) == trigger_word(embedding.name):
        return name
    if _usable_placeholder(embedding.name):
        return embedding.name
    return f"<{trigger_word(embedding.name) or 'embedding'}>"


def export_embedding(out_dir, name: str, vectors, metadata: dict[str, str] | None, formats) -> dict[str, Path]:
    """Write one file per format into `out_dir/<format>/` (one folder each, since several
    formats name their file `<name>.safetensors`). Returns {format: path}."""
    out_dir = Path(out_dir)
    return {f: FORMATS[f].save(out_dir / f, name, vectors, metadata) for f in check_formats(formats, name)}


def convert(src, out_dir, formats, *, name: str | None = None, allow_pickle: bool = False,
            opt_in: str = DEFAULT_OPT_IN) -> tuple[Embedding, dict[str, Path]]:
    """Read `src` (any format) and write it as `formats` into `out_dir/<format>/`."""
    formats = check_formats(formats, name, key="--to")
    emb = load_any(src, allow_pickle=allow_pickle, opt_in=opt_in)
    emb.name = name or trigger_placeholder(emb)  # the input's own placeholder, as finetune.evaluate reads it
    check_formats(formats, emb.name, key="--to")  # every file name is checked before the first is written
    return emb, export_embedding(out_dir, emb.name, emb.vectors, emb.metadata, formats)


__all__ = [
    "Embedding", "EmbeddingFormat", "FORMATS", "check_formats", "check_trigger_stem", "convert", "detect_format",
    "export_embedding", "file_safe_name", "import_torch", "is_pickle_path", "load_any", "modelspec_metadata",
    "torch_available", "torch_load", "trigger_placeholder",
]
