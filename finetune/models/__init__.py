"""The SD v1 model family: build components from a preset and load their weights."""

from __future__ import annotations

import keras

from finetune.backends import set_random_seed
from finetune.errors import ConfigError
from finetune.models.presets import Preset
from finetune.models.text_encoder import TextEncoder
from finetune.models.unet import UNet
from finetune.models.vae import VAEDecoder, VAEEncoder

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


def component_policy(precision: str, frozen_dtype: str | None = None) -> str:
    """The Keras dtype policy components are built with: `precision`, or with `frozen_dtype`
    the plain policy of that dtype (weights and compute in it)."""
    if frozen_dtype is None:
        return precision
    if frozen_dtype not in FROZEN_DTYPES:
        raise ConfigError(f"model.frozen_dtype={frozen_dtype!r}; choose null or one of {list(FROZEN_DTYPES)}")
    if precision != FROZEN_DTYPES[frozen_dtype]:
        raise ConfigError(f"model.frozen_dtype={frozen_dtype} needs model.precision={FROZEN_DTYPES[frozen_dtype]} "
                          f"(got {precision})")
    return frozen_dtype


def build_with_policy(preset: Preset, component: str, precision: str = "float32", frozen_dtype: str | None = None,
                      init_seed: int = 0, num_placeholder_vectors: int = 0) -> keras.Model:
    """`component` of `preset` built under `component_policy(precision, frozen_dtype)` with seeded
    initial weights (seed `init_seed` + the component's index). The global dtype policy is left at
    `precision` (what the trainer compiles with)."""
    set_precision(precision)
    keras.config.set_dtype_policy(component_policy(precision, frozen_dtype))
    set_random_seed(init_seed + COMPONENTS.index(component))
    try:
        return build_component(preset, component, num_placeholder_vectors)
    finally:
        keras.config.set_dtype_policy(precision)
