"""Weight files in and out of the model family.

Two formats:
- keras-cv's published SD v1 files (`kcv_encoder.h5`, `kcv_diffusion_model.h5`,
  `kcv_decoder.h5`, `vae_encoder.h5`): legacy Keras 2 HDF5 weight files. They store one
  group per top-level layer, listed in the `layer_names` attribute, each with its
  `weight_names` in order; nothing else identifies a weight (Keras 2 auto-named them).
  We port them by position into each model's `keras_cv_layout()` with a shape check
  on every tensor.
- the project's own `.safetensors` files, keyed by each variable's stable path
  (`unet/down_0_res_0/conv1/kernel`), used for the weights the project trains itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

from finetune.errors import DataError, MissingFileError

KERAS_CV_FILES = {
    "text_encoder": "kcv_encoder.h5",
    "unet": "kcv_diffusion_model.h5",
    "vae_encoder": "vae_encoder.h5",
    "vae_decoder": "kcv_decoder.h5",
}
WHERE_WEIGHTS_COME_FROM = (
    "keras-cv's SD v1.4 files are kcv_encoder.h5, kcv_diffusion_model.h5, vae_encoder.h5 and kcv_decoder.h5 "
    "(keras_cv.models.StableDiffusion caches them in ~/.keras/datasets on a machine with network); "
    "copy them here and set model.weights.* to their paths"
)


def _h5_list_attr(group, name: str) -> list[str]:
    """A string-list attribute, which Keras splits into name0, name1, ... when it is large."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if hasattr(v, "decode") else str(v) for chunk in chunks for v in chunk]


def read_legacy_h5(path: str | Path) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, weight arrays) for every layer with weights, in the file's layer order."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            layer_names = _h5_list_attr(root, "layer_names")
            if not layer_names:
                raise DataError(f"{path}: no 'layer_names' attribute; not a Keras .h5 weight file")
            groups = []
            for name in layer_names:
                weight_names = _h5_list_attr(root[name], "weight_names")
                if weight_names:
                    groups.append((name, [np.asarray(root[name][w]) for w in weight_names]))
            return groups
    except (OSError, KeyError) as e:
        raise DataError(f"{path}: cannot read as a Keras .h5 weight file ({e})") from e


def assign_groups(layout: list[list], groups: list[tuple[str, list[np.ndarray]]], source: str) -> None:
    """Copy `groups` (from a file) into `layout` (a model's variables), checking every count and shape first."""
    if len(layout) != len(groups):
        raise DataError(
            f"{source}: holds {len(groups)} layers with weights, the model has {len(layout)}; "
            "is it the file of another component or preset?"
        )
    for i, (variables, (name, arrays)) in enumerate(zip(layout, groups)):
        if len(variables) != len(arrays):
            raise DataError(f"{source}: layer #{i} ({name}) has {len(arrays)} weights, the model expects {len(variables)}")
        for var, array in zip(variables, arrays):
            if tuple(var.shape) != array.shape:
                raise DataError(
                    f"{source}: layer #{i} ({name}) weight of shape {array.shape} does not fit {var.path} {tuple(var.shape)}"
                )
    for variables, (_, arrays) in zip(layout, groups):
        for var, array in zip(variables, arrays):
            var.assign(array.astype(var.dtype))


def load_keras_cv_weights(model: keras.Model, path: str | Path) -> None:
    assign_groups(model.keras_cv_layout(), read_legacy_h5(path), str(path))


def frozen_weights(model: keras.Model) -> list:
    """The variables a weight file holds: every variable but the learned placeholder vectors."""
    return [w for w in model.weights if not w.path.endswith("learned_vectors")]


def save_safetensors_weights(model: keras.Model, path: str | Path) -> Path:
    """Write the model's frozen weights to `path`, keyed by variable path (atomically)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {w.path: np.ascontiguousarray(keras.ops.convert_to_numpy(w)) for w in frozen_weights(model)}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    return path


def load_safetensors_weights(model: keras.Model, path: str | Path) -> None:
    """Names and shapes are checked first; then one tensor at a time is read (memory-mapped), so
    loading needs no second copy of the model in memory (SD v1's UNet file is 3.4 GB)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
            variables = {w.path: w for w in frozen_weights(model)}
            missing, unexpected = sorted(set(variables) - set(shapes)), sorted(set(shapes) - set(variables))
            if missing or unexpected:
                raise DataError(
                    f"{path}: does not match {model.name} (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                    f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
                )
            for name, var in variables.items():
                if tuple(var.shape) != shapes[name]:
                    raise DataError(f"{path}: {name} has shape {shapes[name]}, the model expects {tuple(var.shape)}")
            for name, var in variables.items():
                var.assign(f.get_tensor(name).astype(var.dtype))
    except (SafetensorError, OSError) as e:
        raise DataError(f"{path}: cannot read as safetensors ({e})") from e


def require_file(path: str | Path, config_key: str) -> Path:
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        hint = WHERE_WEIGHTS_COME_FROM if path.suffix == ".h5" else "check the path"
        raise MissingFileError(f"{config_key}={path}: file not found; {hint}")
    return path


def load_weights(model: keras.Model, path: str | Path | None, config_key: str) -> None:
    """Load `path` into `model` by its format; `config_key` names the setting in errors."""
    if path is None:
        return
    path = require_file(path, config_key)
    if path.suffix == ".h5":
        load_keras_cv_weights(model, path)
    elif path.suffix == ".safetensors":
        load_safetensors_weights(model, path)
    else:
        raise DataError(f"{config_key}={path}: unknown weight format {path.suffix!r}; use keras-cv .h5 or .safetensors")
