"""Assembly: a model config -> the preset and the weights of each component, then the parts
every command builds from them.

    resolve_model(model_cfg)        -> ModelSource (preset + weight source, resolved once)
    load_component(source, name)    -> a component with its weights (files, or a checkpoint converted now)
    make_tokenizer / initializer_ids (finetune.tokens.placeholders)
    build_renderer(source, ...)     -> the PromptRenderer (loads the VAE decoder)
    build_pipeline(source, ...)     -> tokenizer + text encoder (with given vectors) + UNet + decoder + renderer

Train, evaluate, the quality benchmark, the speed benchmark and generate all build their
models here, so a preset, a weight file or a checkpoint means the same thing everywhere.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import keras
import numpy as np

from finetune.errors import ConfigError, DataError, MissingFileError
from finetune.models import COMPONENTS, build_with_policy, component_policy, set_precision
from finetune.models.presets import PRESETS, Preset, get_preset
from finetune.models.weights import load_weights, require_file
from finetune.sampling.renderer import PromptRenderer
from finetune.tokens.placeholders import initializer_ids, make_tokenizer
from finetune.tokens.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

CHECKPOINT_KINDS = "a diffusers folder, a CompVis .safetensors file or a folder written by python -m finetune.convert"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved once: its preset, and per component either a weight
    file, the checkpoint it is converted from, or (with `allow_random_weights`) seeded random weights."""

    preset: Preset
    weights: dict[str, str | None] = field(default_factory=dict)  # component -> file (keras-cv .h5 / .safetensors)
    checkpoint: str | None = None  # a diffusers folder / CompVis file / converted folder: every component from it
    allow_random_weights: bool = False
    init_seed: int = 0
    precision: str = "float32"
    frozen_dtype: str | None = None
    jit_compile: bool = False


def _expand(path) -> str:
    return os.path.expanduser(str(path))


def resolve_preset(name_or_path: str) -> Preset:
    """A preset name, or the path of a preset.json / converted folder / SD v1 checkpoint (its preset is
    read from the checkpoint's configs, or its weight shapes for a CompVis file)."""
    if name_or_path in PRESETS:
        return get_preset(name_or_path)
    if os.path.exists(_expand(name_or_path)):
        from finetune.convert import checkpoint_preset

        return checkpoint_preset(name_or_path)
    if "/" in str(name_or_path) or os.sep in str(name_or_path):
        raise MissingFileError(f"{name_or_path}: not found (model.preset / model.checkpoint); "
                               "give a preset name or an existing path")
    return get_preset(name_or_path)  # the error that lists the presets


def resolve_model(model_cfg) -> ModelSource:
    """The ModelSource of a `ModelConfig` (finetune/config.py). Checks that the checkpoint exists; the
    weight files are checked by `require_weights` for the components a command needs."""
    checkpoint = model_cfg.checkpoint
    if checkpoint is not None and not os.path.exists(_expand(checkpoint)):
        raise MissingFileError(f"model.checkpoint={checkpoint}: not found; give {CHECKPOINT_KINDS}")
    component_policy(model_cfg.precision, model_cfg.frozen_dtype)  # a bad combination fails here, not later
    set_precision(model_cfg.precision)
    return ModelSource(
        preset=resolve_preset(model_cfg.preset),
        weights={c: getattr(model_cfg.weights, c) for c in COMPONENTS},
        checkpoint=checkpoint,
        allow_random_weights=model_cfg.allow_random_weights,
        init_seed=model_cfg.init_seed,
        precision=model_cfg.precision,
        frozen_dtype=model_cfg.frozen_dtype,
        jit_compile=model_cfg.jit_compile,
    )


def require_weights(source: ModelSource, components) -> None:
    """Check every weight file a command needs before any work starts."""
    if source.checkpoint is not None:
        return  # every component comes from the checkpoint (checked by resolve_model)
    for component in components:
        path = source.weights.get(component)
        if path is not None:
            require_file(path, f"model.weights.{component}")
        elif not source.allow_random_weights:
            raise ConfigError(
                f"model.weights.{component} is not set; give the local path of the {component} weights "
                "(or model.allow_random_weights=true for random weights)"
            )


def load_component(source: ModelSource, component: str, num_placeholder_vectors: int = 0) -> keras.Model:
    """`component` of the source's preset with its weights: from the checkpoint (converted now, see
    `finetune.convert`), from its weight file, or seeded random weights where that is allowed."""
    require_weights(source, [component])
    model = build_with_policy(source.preset, component, source.precision, source.frozen_dtype, source.init_seed,
                              num_placeholder_vectors)
    if source.checkpoint is not None:
        from finetune.convert import load_checkpoint_component

        load_checkpoint_component(model, source.checkpoint, component)
        return model
    path = source.weights.get(component)
    if path is None:
        log.warning("%s: no weight file, using seeded random weights (model.init_seed=%d)", component, source.init_seed)
    load_weights(model, path, f"model.weights.{component}")
    return model


def load_text_encoder(source: ModelSource, num_vectors: int, vectors: np.ndarray | None = None,
                      what: str = "the learned vectors") -> keras.Model:
    """The text encoder with `num_vectors` learned rows, set to `vectors` when given (checked to fit)."""
    text_encoder = load_component(source, "text_encoder", num_placeholder_vectors=num_vectors)
    if vectors is not None:
        width = text_encoder.spec.width
        if np.ndim(vectors) != 2 or np.shape(vectors)[1] != width:
            raise DataError(f"{what}: vectors of shape {list(np.shape(vectors))} do not fit the text encoder of "
                            f"preset {source.preset.name} (width {width})")
        text_encoder.token_embedding.set_learned_vectors(vectors)
    return text_encoder


def build_renderer(source: ModelSource, tokenizer: ClipTokenizer, text_encoder, unet, resolution: int,
                   vae_decoder=None) -> PromptRenderer:
    """The renderer of these models (the VAE decoder is loaded unless given)."""
    decoder = vae_decoder if vae_decoder is not None else load_component(source, "vae_decoder")
    return PromptRenderer(tokenizer, text_encoder, unet, decoder, resolution, source.jit_compile)


@dataclass
class Pipeline:
    """Everything that renders with a learned token."""

    source: ModelSource
    tokenizer: ClipTokenizer
    placeholder: str
    placeholder_ids: list[int]
    text_encoder: keras.Model
    unet: keras.Model
    renderer: PromptRenderer

    def set_vectors(self, vectors: np.ndarray) -> None:
        self.text_encoder.token_embedding.set_learned_vectors(vectors)

    def initial_vectors(self, initializer: str | None, seed: int) -> np.ndarray:
        """The vectors a run with `token.initializer=initializer` starts from."""
        ids = initializer_ids(self.tokenizer, initializer)
        return self.text_encoder.token_embedding.initial_vectors(ids, seed)


def build_pipeline(source: ModelSource, placeholder: str, num_vectors: int, resolution: int,
                   vectors: np.ndarray | None = None, truncate_long_prompts: bool = False,
                   what: str = "the learned vectors") -> Pipeline:
    """Tokenizer (with `placeholder`), text encoder (with `vectors`), UNet, VAE decoder and renderer."""
    require_weights(source, ["text_encoder", "unet", "vae_decoder"])
    text_encoder = load_text_encoder(source, num_vectors, vectors, what)
    tokenizer, ids = make_tokenizer(placeholder, num_vectors, source.preset.text_encoder.max_length,
                                    truncate_long_prompts)
    unet = load_component(source, "unet")
    renderer = build_renderer(source, tokenizer, text_encoder, unet, resolution)
    return Pipeline(source, tokenizer, placeholder, ids, text_encoder, unet, renderer)


def check_resolution(preset: Preset, resolution: int, key: str = "data.resolution") -> None:
    """Latents must halve cleanly at every UNet level."""
    total = preset.vae.downsampling_factor * 2 ** (len(preset.unet.block_channels) - 1)
    if resolution < total or resolution % total:
        raise ConfigError(f"{key}={resolution} must be a positive multiple of {total} (the model's total downsampling)")


__all__ = [
    "ModelSource", "Pipeline", "build_pipeline", "build_renderer", "check_resolution", "initializer_ids",
    "load_component", "load_text_encoder", "make_tokenizer", "require_weights", "resolve_model", "resolve_preset",
]
