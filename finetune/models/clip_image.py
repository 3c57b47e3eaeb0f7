"""A miniature CLIP: an image tower, and the projection heads that put both towers in one space.

CLIP (Radford et al. 2021) embeds an image and a caption as unit vectors and scores a pair
by their cosine similarity times a learned temperature. The text tower here is the
project's own `TextEncoder` (the one the diffusion model is conditioned on); its
caption vector is the hidden state at the caption's first <|endoftext|> token (the EOT
pooling of CLIP's text transformer), projected by `text_projection`.

`ClipImageModel` holds everything of CLIP that is not the text encoder: the image tower
(a patchifying stem, one ResBlock per level with stride-2 downsampling between levels,
GroupNorm + swish, global average pooling, `image_projection`), `text_projection` and the
logit scale. It is one weight file (`clip_image.safetensors`), next to the text encoder's.
Trained by `finetune.pretraining.clip`; used as the judge of CLIP-I / CLIP-T metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import layers, ops

from finetune.errors import ConfigError
from finetune.models.layers import Downsample, ResBlock, group_norm


@dataclass(frozen=True)
class ClipImageSpec:
    image_channels: int = 3
    patch_size: int = 4  # the stem: a patch_size x patch_size convolution with that stride
    block_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    norm_groups: int = 8
    norm_epsilon: float = 1e-5
    embed_dim: int = 64  # the shared image-text space
    text_width: int = 64  # the text encoder's width
    init_temperature: float = 0.07  # CLIP's initial softmax temperature
    max_logit_scale: float = 100.0  # CLIP clips exp(logit_scale) to 100


# The judge of each preset that has one (SD v1 would use the real CLIP ViT-L/14 instead).
CLIP_IMAGE_SPECS: dict[str, ClipImageSpec] = {"tiny": ClipImageSpec(text_width=64)}


def get_clip_image_spec(preset_name: str) -> ClipImageSpec:
    if preset_name not in CLIP_IMAGE_SPECS:
        raise ConfigError(f"preset {preset_name!r} has no CLIP image tower; presets with one: {sorted(CLIP_IMAGE_SPECS)}")
    return CLIP_IMAGE_SPECS[preset_name]


def pool_at_end_token(hidden_states, token_ids, end_id: int):
    """hidden_states [B, L, D] at each row's first `end_id` token -> [B, D] (CLIP's text pooling)."""
    position = ops.argmax(ops.cast(ops.equal(token_ids, end_id), "int32"), axis=1)  # argmax: the first one
    return ops.take_along_axis(hidden_states, ops.cast(position, "int32")[:, None, None], axis=1)[:, 0]


def l2_normalize(x, epsilon: float = 1e-6):
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), epsilon))


class ClipImageModel(keras.Model):
    """images [B, H, W, 3] in [-1, 1] -> unit image embeddings [B, embed_dim]; `embed_text` for captions."""

    def __init__(self, spec: ClipImageSpec, name: str = "clip_image", **kwargs):
        super().__init__(name=name, **kwargs)
        self.spec = s = spec
        self.stem = layers.Conv2D(s.block_channels[0], s.patch_size, strides=s.patch_size, name="stem")
        self.levels = []
        for i, ch in enumerate(s.block_channels):
            blocks = [ResBlock(ch, s.norm_groups, s.norm_epsilon, time_conditioned=False, name=f"level_{i}_res_{j}")
                      for j in range(s.layers_per_block)]
            if i < len(s.block_channels) - 1:
                blocks.append(Downsample(ch, pad=1, name=f"level_{i}_downsample"))
            self.levels.append(blocks)
        self.norm_out = group_norm(s.norm_groups, s.norm_epsilon, "norm_out")
        self.image_projection = layers.Dense(s.embed_dim, use_bias=False, name="image_projection")
        self.text_projection = layers.Dense(s.embed_dim, use_bias=False, name="text_projection")
        self.logit_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(1.0 / s.init_temperature)), name="logit_scale"
        )
        self(ops.zeros((1, 4 * s.patch_size, 4 * s.patch_size, s.image_channels)))  # build every variable now

    def build(self, input_shape):
        self.text_projection.build((None, self.spec.text_width))  # not on the image path: built here, in scope

    def call(self, images):
        x = self.stem(images)
        for blocks in self.levels:
            for block in blocks:
                x = block(x)
        x = ops.mean(ops.silu(self.norm_out(x)), axis=(1, 2))
        return l2_normalize(self.image_projection(x))

    def embed_text(self, hidden_states, token_ids, end_id: int):
        """Text-encoder hidden states [B, L, width] and their ids [B, L] -> unit caption embeddings [B, embed_dim]."""
        return l2_normalize(self.text_projection(pool_at_end_token(hidden_states, token_ids, end_id)))

    def scale(self):
        """exp(logit_scale), clipped at `max_logit_scale` as CLIP does."""
        return ops.minimum(ops.exp(self.logit_scale), self.spec.max_logit_scale)
