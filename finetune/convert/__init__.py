"""Use any Stable Diffusion v1 checkpoint: diffusers folders and CompVis single files -> project weights.

`python -m finetune.convert source=PATH out=DIR` writes DIR/{text_encoder,unet,vae_encoder,vae_decoder}.safetensors
and DIR/preset.json; `model=diffusers model.checkpoint=PATH` uses a checkpoint (or DIR) directly.
Modules: `readers` (files, safety), `keymaps` (names as data), `configs` (preset from config.json
or shapes), `convert` (porting by name with shape checks, writing).
"""

import importlib

# name -> module; imported on first use, so that `python -m finetune.convert` can silence
# TensorFlow's import-time notices before anything imports Keras
_EXPORTS = {
    "checkpoint_preset": "convert", "convert_checkpoint": "convert", "load_checkpoint_component": "convert",
    "open_checkpoint": "readers", "preset_from_diffusers_config": "configs",
}  # fmt: skip
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"finetune.convert.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'finetune.convert' has no attribute {name!r}")
