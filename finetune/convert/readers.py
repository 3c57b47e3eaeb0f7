"""Reading SD v1 checkpoints: a diffusers folder or a CompVis single file, as tensors under diffusers names.

Safetensors files are read lazily: the header is validated against the file size first
(`finetune.safefiles.SafetensorsReader`: bounded header, typed fields, offsets
tiling the data exactly, a cap on each tensor), then each tensor is read on demand, so converting never holds
more than the tensor at hand. Pickle-based files (`.ckpt`, `.bin`, `.pt`, `.pth`) are
refused unless the caller opts in, and then read only with `torch.load(weights_only=True)`
(`finetune.export.formats.torch_load`; torch is an optional extra).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.convert import keymaps
from finetune.convert.configs import infer_compvis_configs
from finetune.errors import ConfigError, DataError, MissingFileError
from finetune.export.formats import import_torch, is_pickle_path, torch_load
from finetune.safefiles import ALL_DTYPES, FLOAT_DTYPES, SafetensorsReader, read_json

HINT = "re-download or re-save the checkpoint"
OPT_IN = "allow_pickle=true"
# Tensor dtypes a checkpoint may hold; only floating-point ones are ever read as weights, the
# others are buffers such as position ids.
DTYPES = ALL_DTYPES
FLOATS = tuple(FLOAT_DTYPES)
# diffusers folder: sub-folder -> weight file stems, safetensors first (diffusers / transformers names)
SUBFOLDERS = {
    "unet": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
    "vae": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
    "text_encoder": ("model", "pytorch_model"),
}


class SafetensorsFile:
    """One safetensors file with a validated header; `read` loads one tensor as float32."""

    def __init__(self, path: Path):
        self.path = path
        self._reader = SafetensorsReader(path, dtypes=DTYPES, hint=HINT, what="checkpoint file")
        self.entries, self.data_start = self._reader.entries, self._reader.data_start

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._reader.shapes()

    def read(self, name: str) -> np.ndarray:
        dtype = self.entries[name][0]
        if dtype not in FLOATS:
            raise DataError(f"{self.path}: tensor {name!r} has dtype {dtype}; weights must be floating point")
        return self._reader.read(name)


class TorchFile:
    """A pickled state dict, read with torch.load(weights_only=True) after the caller opted in."""

    def __init__(self, path: Path, allow_pickle: bool, opt_in: str):
        self.path = path
        obj = torch_load(path, allow_pickle, opt_in, what="checkpoint", hint=HINT, mmap=zipfile.is_zipfile(path))
        torch = import_torch(f"reading {path}")
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict):
            raise DataError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
        self.tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self.tensors.items()}

    def read(self, name: str) -> np.ndarray:
        tensor = self.tensors[name]
        if not tensor.is_floating_point():
            raise DataError(f"{self.path}: tensor {name!r} has dtype {tensor.dtype}; weights must be floating point")
        import torch

        return tensor.detach().to(torch.float32).numpy()


def open_weight_file(path: Path, allow_pickle: bool, opt_in: str = OPT_IN):
    if not path.is_file():
        raise MissingFileError(f"checkpoint file {path} does not exist; check the path")
    if is_pickle_path(path):
        return TorchFile(path, allow_pickle, opt_in)
    return SafetensorsFile(path)


@dataclass
class Tensors:
    """The weights of one model under diffusers names, each read from its file on demand."""

    where: dict[str, tuple[object, str]] = field(default_factory=dict)  # name -> (file, name in the file)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def add(self, name: str, file, key: str, shape: tuple[int, ...]) -> None:
        self.where[name] = (file, key)
        self.shapes[name] = shape

    def read(self, name: str) -> np.ndarray:
        file, key = self.where[name]
        return file.read(key)


@dataclass
class Checkpoint:
    source: Path
    kind: str  # "diffusers" | "compvis"
    configs: dict[str, dict]  # "unet" / "vae" / "text_encoder" -> diffusers config dict
    tensors: dict[str, Tensors]  # same keys
    unknown: list[str] = field(default_factory=list)  # names no table knows (reported by the conversion)
    ignored: list[str] = field(default_factory=list)  # buffers, EMA copies, schedule constants


def _diffusers_name(model: str, key: str) -> str | None:
    """A diffusers-folder key in the project's diffusers spelling (None: a buffer, not a weight)."""
    if key.endswith(keymaps.BUFFER_SUFFIXES):
        return None
    if model == "text_encoder":
        return keymaps.strip_text_model(key)
    if model == "vae" and ".mid_block.attentions.0." in key:
        head, tail = key.split(".mid_block.attentions.0.", 1)
        proj, _, leaf = tail.rpartition(".")
        key = f"{head}.mid_block.attentions.0.{keymaps.DEPRECATED_VAE_ATTENTION.get(proj, proj)}.{leaf}"
    return key


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file holding an object (bounded, `finetune.safefiles.read_json`); anything else is a DataError."""
    return read_json(path, what)


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist; a diffusers SD v1 folder has unet/, vae/ and text_encoder/ with a config.json each")
    return read_json_object(path, "config.json")


def read_configs(folder: Path) -> dict[str, dict]:
    """The three config.json files of a diffusers folder (or of a folder holding only the configs)."""
    return {model: _read_config(Path(folder) / model) for model in SUBFOLDERS}


def _weight_files(folder: Path, model: str, allow_pickle: bool, opt_in: str) -> list:
    stem, pickle_stem = SUBFOLDERS[model]
    safetensors = [folder / f"{stem}.safetensors", folder / f"{stem}.fp16.safetensors"]
    index = folder / f"{stem}.safetensors.index.json"
    for path in safetensors:
        if path.is_file():
            return [open_weight_file(path, allow_pickle, opt_in)]
    if index.is_file():
        weight_map = read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise DataError(f"{index} is not a safetensors index (no weight_map of file names)")
        shards = sorted(set(weight_map.values()))
        if any(Path(shard).name != shard for shard in shards):
            raise DataError(f"{index} names shard files outside its folder: {[s for s in shards if Path(s).name != s][:3]}")
        return [open_weight_file(folder / shard, allow_pickle, opt_in) for shard in shards]
    for path in (folder / f"{pickle_stem}.bin", folder / f"{pickle_stem}.fp16.bin"):
        if path.is_file():
            return [open_weight_file(path, allow_pickle, opt_in)]
    raise MissingFileError(f"{folder} holds no {stem}.safetensors (nor a .bin); is it a diffusers {model} folder?")


def open_diffusers_folder(folder: Path, allow_pickle: bool = False, opt_in: str = OPT_IN) -> Checkpoint:
    configs, tensors, ignored = read_configs(folder), {}, []
    for model in SUBFOLDERS:
        tensors[model] = Tensors()
        for file in _weight_files(folder / model, model, allow_pickle, opt_in):
            for key, shape in file.shapes().items():
                name = _diffusers_name(model, key)
                if name is None:
                    ignored.append(f"{model}/{key}")
                else:
                    tensors[model].add(name, file, key, shape)
    return Checkpoint(folder, "diffusers", configs, tensors, ignored=ignored)


def _compvis_model(key: str) -> tuple[str | None, str]:
    for model, prefix in keymaps.COMPVIS_PREFIXES.items():
        if key.startswith(prefix):
            return model, key[len(prefix):]
    return None, key


def open_compvis_file(path: Path, config: str | None = None, allow_pickle: bool = False, opt_in: str = OPT_IN) -> Checkpoint:
    """A CompVis single file, renamed to diffusers names. Its configs come from `config` (a folder
    with unet/, vae/, text_encoder/ config.json files) or are inferred from the shapes."""
    file = open_weight_file(path, allow_pickle, opt_in)
    shapes = file.shapes()
    by_model: dict[str, dict[str, str]] = {model: {} for model in keymaps.COMPVIS_PREFIXES}  # model -> {short key: key}
    unknown, ignored = [], []
    for key in shapes:
        model, short = _compvis_model(key)
        if key in keymaps.COMPVIS_IGNORED or key.startswith(keymaps.COMPVIS_IGNORED_PREFIXES) or key.endswith(keymaps.BUFFER_SUFFIXES):
            ignored.append(key)
        elif model is None:
            unknown.append(key)
        else:
            by_model[model][short] = key
    structure = keymaps.compvis_structure(by_model["unet"], by_model["vae"])
    tables = {"unet": keymaps.compvis_unet_blocks(*structure["unet"]), "vae": keymaps.compvis_vae_blocks(*structure["vae"])}
    tensors = {model: Tensors() for model in keymaps.COMPVIS_PREFIXES}
    for model, keys in by_model.items():
        for short, key in keys.items():
            name = keymaps.strip_text_model(short) if model == "text_encoder" else keymaps.rename(short, tables[model])
            if name is None:
                unknown.append(key)
            else:
                tensors[model].add(name, file, key, shapes[key])
    if config is not None:
        configs = read_configs(Path(config))
    else:
        inferred = infer_compvis_configs(*(tensors[m].shapes for m in ("unet", "vae", "text_encoder")))
        configs = dict(zip(("unet", "vae", "text_encoder"), inferred))
    return Checkpoint(path, "compvis", configs, tensors, unknown=sorted(unknown), ignored=ignored)


def is_converted_folder(path: Path) -> bool:
    """A folder written by `python -m finetune.convert` (preset.json + project weight files)."""
    return path.is_dir() and (path / "preset.json").is_file()


def open_checkpoint(source, config: str | None = None, allow_pickle: bool = False, opt_in: str = OPT_IN) -> Checkpoint:
    """A diffusers SD v1 folder or a CompVis single-file checkpoint, under diffusers names."""
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        if not (path / "unet").is_dir():
            raise ConfigError(
                f"{path} is a folder but not a diffusers SD v1 folder (no unet/ sub-folder) nor one written by "
                "python -m finetune.convert (no preset.json)"
            )
        return open_diffusers_folder(path, allow_pickle, opt_in)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist; give a diffusers folder or a CompVis .safetensors file")
    return open_compvis_file(path, config, allow_pickle, opt_in)
