"""The SD v1 model family: build components from a preset and load their weights."""

from __future__ import annotations

import logging
import keras

from finetune.errors import ConfigError
from finetune.models.presets import Preset, get_preset
from finetune.models.text_encoder import TextEncoder
from finetune.models.unet import UNet
from finetune.models.vae import VAEDecoder, VAEEncoder
from finetune.models.weights import load_weights, require_weight_files

log = logging.getLogger(__name__)
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def build_component(preset: Preset, component: str, num_placeholder_vectors: int = 0) -> keras.Model:
    if component == "text_encoder":
        return TextEncoder(preset.text_encoder, num_placeholder_vectors)
    if component == "unet":
        return UNet(preset.unet)
    if component == "vae_encoder":
        return VAEEncoder(preset.vae)
    if component == "vae_decoder":
        return VAEDecoder(preset.vae)
    raise ValueError(f"unknown component {component!r}")


def set_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"model.precision={precision!r}; choose one of {list(PRECISIONS)}")
    keras.config.set_dtype_policy(precision)


def load_component(model_cfg, component: str, num_placeholder_vectors: int = 0) -> keras.Model:
    """Build `component` of `model_cfg.preset` and load `model_cfg.weights.<component>` into it.

    A component without a weight file gets seeded random weights if
    `model.allow_random_weights` is true, and is an error naming the key otherwise.
    """
    preset = get_preset(model_cfg.preset)
    require_weight_files(model_cfg, [component])
    path = getattr(model_cfg.weights, component)
    set_precision(model_cfg.precision)
    keras.utils.set_random_seed(model_cfg.init_seed + COMPONENTS.index(component))
    model = build_component(preset, component, num_placeholder_vectors)
    if path is None:
        log.warning("%s: no weight file, using seeded random weights (model.init_seed=%d)", component, model_cfg.init_seed)
    load_weights(model, path, f"model.weights.{component}")
    return model
