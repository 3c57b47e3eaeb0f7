"""Port a checkpoint's weights into the project's models by name, with every shape checked.

For each Keras variable of a component, `keymaps` names the diffusers key that holds it;
the tensor is brought to Keras' layout (`to_keras`) and must then have the variable's
shape. Nothing is assigned until the whole component checks out: a key the model needs
and the checkpoint lacks (missing), a key of the checkpoint no variable takes (unused),
a name no table knows (unknown) or a shape that does not fit is one ConfigError listing
every such key.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from finetune.convert import keymaps
from finetune.convert.configs import preset_from_diffusers_config
from finetune.convert.readers import OPT_IN, Checkpoint, Tensors, is_converted_folder, open_checkpoint, read_json_object
from finetune.errors import ConfigError, FinetuneError
from finetune.io import atomic_write, write_json_atomic
from finetune.models.presets import Preset, preset_from_dict, preset_to_dict

log = logging.getLogger(__name__)
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
PRESET_FILE = "preset.json"
SHOWN = 8  # keys listed per kind of problem in an error


def to_keras(array: np.ndarray, leaf: str, target_ndim: int) -> np.ndarray:
    """A torch-layout tensor in Keras' layout. Only kernels differ:
    conv weights [out, in, kh, kw] -> [kh, kw, in, out]; linear weights [out, in] -> [in, out],
    or [1, 1, in, out] where the project uses a 1x1 convolution for a linear layer
    (diffusers' VAE attention, `use_linear_projection` transformers)."""
    if leaf != "kernel":
        return array
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:
        kernel = array.T
        return kernel.reshape(1, 1, *kernel.shape) if target_ndim == 4 else kernel
    return array


def keras_shape(shape: tuple[int, ...], leaf: str, target_ndim: int) -> tuple[int, ...]:
    """The shape `to_keras` gives, without any data (a zero-stride view of the shape)."""
    return to_keras(np.broadcast_to(np.zeros((), np.float32), shape), leaf, target_ndim).shape


def _listing(kind: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN]) + (f", ... ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")
    return f"{len(keys)} {kind} [{shown}]"


def plan_component(model, component: str, tensors: Tensors, unknown: list[str] = ()) -> list[tuple[object, str]]:
    """(variable, diffusers key) for every frozen variable of `model`; ConfigError listing every problem."""
    from finetune.models.weights import frozen_weights

    blocks = keymaps.component_blocks(component, model.spec)
    source_model, prefixes = keymaps.SOURCES[component]
    # every prefix any project component reads from this diffusers model: keys under none are unused by all
    all_prefixes = tuple(p for c, (m, ps) in keymaps.SOURCES.items() if m == source_model for p in ps)
    plan, missing, mismatched = [], [], []
    for var in frozen_weights(model):
        key = keymaps.project_to_diffusers(var.path, blocks)
        if key is None or key not in tensors.shapes:
            missing.append(key or f"(no name for {var.path})")
            continue
        leaf = var.path.rsplit("/", 1)[1]
        got = keras_shape(tensors.shapes[key], leaf, len(var.shape))
        if got != tuple(var.shape):
            mismatched.append(f"{key} {list(tensors.shapes[key])} -> {var.path} {list(var.shape)}")
        plan.append((var, key))
    taken = {key for _, key in plan}
    unused = sorted(
        k for k in tensors.shapes if k not in taken and (k.startswith(prefixes) or not k.startswith(all_prefixes))
    )
    problems = [_listing(kind, keys) for kind, keys in (
        ("unknown keys", list(unknown)), ("missing keys", missing), ("unused keys", unused),
        ("shape mismatches", mismatched),
    ) if keys]  # fmt: skip
    if problems:
        raise ConfigError(f"cannot convert the {component}: {'; '.join(problems)}")
    return plan


def port_component(model, component: str, tensors: Tensors, unknown: list[str] = ()) -> None:
    """Check the whole component (`plan_component`), then assign every tensor, one at a time."""
    for var, key in plan_component(model, component, tensors, unknown):
        leaf = var.path.rsplit("/", 1)[1]
        var.assign(to_keras(tensors.read(key), leaf, len(var.shape)))  # Variable.assign casts to its dtype


def save_weights(model, path: Path) -> Path:
    """The model's frozen weights as a safetensors file keyed by variable path (the format
    `finetune.models.weights.load_safetensors_weights` reads), written one tensor at a time,
    so writing needs no second copy of the model in memory; atomic."""
    from keras import ops

    from finetune.models.weights import frozen_weights

    names = {"float32": "F32", "float16": "F16"}
    variables = sorted(frozen_weights(model), key=lambda w: w.path)
    header, offset = {}, 0
    for var in variables:
        nbytes = int(np.prod(var.shape, dtype=np.int64)) * np.dtype(var.dtype).itemsize
        header[var.path] = {"dtype": names[var.dtype], "shape": list(var.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
    with atomic_write(path, "weights") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for var in variables:
            f.write(np.ascontiguousarray(ops.convert_to_numpy(var), dtype=np.dtype(var.dtype).newbyteorder("<")).tobytes())
    return Path(path)


def checkpoint_name(source) -> str:
    path = Path(os.path.expanduser(str(source)))
    return path.name if path.is_dir() else path.stem


def preset_of(checkpoint: Checkpoint) -> Preset:
    c = checkpoint.configs
    return preset_from_diffusers_config(c["unet"], c["vae"], c["text_encoder"], name=checkpoint_name(checkpoint.source))


def read_preset_file(path: Path) -> Preset:
    data = read_json_object(path, "preset.json")
    data.pop("converted_from", None)
    return preset_from_dict(data, str(path))


@lru_cache(maxsize=8)
def _cached_preset(path: str, mtime: float) -> Preset:
    p = Path(path)
    if p.suffix == ".json" and p.is_file():
        return read_preset_file(p)
    if is_converted_folder(p):
        return read_preset_file(p / PRESET_FILE)
    return preset_of(open_checkpoint(p, opt_in=f"python -m finetune.convert source={p} out=DIR {OPT_IN}"))


def checkpoint_preset(source) -> Preset:
    """The preset of a preset.json, a converted folder, a diffusers folder or a CompVis file.
    A pickle checkpoint is refused: convert it once with `python -m finetune.convert ... allow_pickle=true`."""
    path = Path(os.path.expanduser(str(source))).resolve()
    return _cached_preset(str(path), path.stat().st_mtime)


def load_checkpoint_component(model, source, component: str) -> None:
    """Fill `model` (the `component` of the checkpoint's preset) from `source`: a converted
    folder (project safetensors files) or a diffusers folder / CompVis file (converted now)."""
    from finetune.models.weights import load_weights

    path = Path(os.path.expanduser(str(source)))
    if is_converted_folder(path):
        load_weights(model, path / f"{component}.safetensors", f"model.checkpoint ({component})")
        return
    checkpoint = open_checkpoint(path, opt_in=f"python -m finetune.convert source={path} out=DIR {OPT_IN}")
    source_model = keymaps.SOURCES[component][0]
    try:
        port_component(model, component, checkpoint.tensors[source_model], checkpoint.unknown)
    except ConfigError as e:
        raise ConfigError(f"model.checkpoint={path}: {e}") from e


def convert_checkpoint(source, out, config: str | None = None, allow_pickle: bool = False,
                       opt_in: str = OPT_IN) -> dict[str, Path]:
    """Convert a diffusers folder or CompVis file into `out`: the four project weight files
    (`<component>.safetensors`) and `preset.json`. All or nothing: the files are made in a
    temporary folder inside `out` and moved into place only when every component converted."""
    from finetune.models import build_component

    checkpoint = open_checkpoint(source, config, allow_pickle, opt_in)
    preset = preset_of(checkpoint)
    out = Path(os.path.expanduser(str(out)))
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=out))
    except OSError as e:
        raise FinetuneError(f"cannot write to {out}: {e.strerror or e}; check the folder is writable") from e
    try:
        staged = {}
        for component in COMPONENTS:
            model = build_component(preset, component)
            port_component(model, component, checkpoint.tensors[keymaps.SOURCES[component][0]], checkpoint.unknown)
            staged[component] = save_weights(model, staging / f"{component}.safetensors")
            del model
            gc.collect()
        source_info = {"source": str(Path(source).resolve()), "layout": checkpoint.kind, "ignored_keys": len(checkpoint.ignored)}
        staged["preset"] = write_json_atomic(staging / PRESET_FILE, {**preset_to_dict(preset), "converted_from": source_info})
        written = {}
        for key, path in staged.items():
            written[key] = out / path.name
            os.replace(path, written[key])
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out.iterdir()):  # a failed conversion leaves no trace
            out.rmdir()
