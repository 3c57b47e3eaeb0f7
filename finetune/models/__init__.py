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
# model.frozen_dtype -> the model.precision it goes with (its compute dtype).
FROZEN_DTYPES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


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


def component_policy(model_cfg) -> str:
    """The Keras dtype policy components are built with: `model.precision`, or with
    `model.frozen_dtype` the plain policy of that dtype (weights and compute in it)."""
    frozen = getattr(model_cfg, "frozen_dtype", None)
    if frozen is None:
        return model_cfg.precision
    if frozen not in FROZEN_DTYPES:
        raise ConfigError(f"model.frozen_dtype={frozen!r}; choose null or one of {list(FROZEN_DTYPES)}")
    if model_cfg.precision != FROZEN_DTYPES[frozen]:
        raise ConfigError(f"model.frozen_dtype={frozen} needs model.precision={FROZEN_DTYPES[frozen]} "
                          f"(got {model_cfg.precision})")
    return frozen


def load_component(model_cfg, component: str, num_placeholder_vectors: int = 0) -> keras.Model:
    """Build `component` of `model_cfg.preset` and load `model_cfg.weights.<component>` into it
    (or, with `model.checkpoint` set, the component's weights from that checkpoint).

    A component without a weight file gets seeded random weights if
    `model.allow_random_weights` is true, and is an error naming the key otherwise.
    The global dtype policy is left at `model.precision` (what the trainer compiles with).
    """
    preset = get_preset(model_cfg.preset)
    checkpoint = getattr(model_cfg, "checkpoint", None)
    require_weight_files(model_cfg, [component])
    path = getattr(model_cfg.weights, component)
    set_precision(model_cfg.precision)
    keras.config.set_dtype_policy(component_policy(model_cfg))
    keras.utils.set_random_seed(model_cfg.init_seed + COMPONENTS.index(component))
    try:
        model = build_component(preset, component, num_placeholder_vectors)
    finally:
        keras.config.set_dtype_policy(model_cfg.precision)
    if checkpoint is not None:  # a diffusers folder / CompVis file, converted now (finetune.convert)
        from finetune.convert import load_checkpoint_component

        load_checkpoint_component(model, checkpoint, component)
        return model
    if path is None:
        log.warning("%s: no weight file, using seeded random weights (model.init_seed=%d)", component, model_cfg.init_seed)
    load_weights(model, path, f"model.weights.{component}")
    return model
