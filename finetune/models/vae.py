"""The SD v1 KL autoencoder: an encoder to latent moments and a decoder back to pixels.

The encoder returns the posterior's mean and log-variance (unscaled); sampling and the
latent scale factor are the trainer's job. The decoder takes *scaled* latents, as the
UNet produces them, and divides by the scale itself (as keras-cv's Decoder does).
"""

from __future__ import annotations

import keras
from keras import ops

from finetune.models.layers import (
    BuildsOnFirstCall,
    Downsample,
    ResBlock,
    Upsample,
    VAEAttention,
    conv,
    flat_weights,
    group_norm,
)
from finetune.models.presets import VAESpec

# CompVis/diffusers clamp the posterior log-variance to this range.
LOGVAR_RANGE = (-30.0, 20.0)


def _res(spec: VAESpec, ch: int, name: str) -> ResBlock:
    return ResBlock(ch, spec.norm_groups, spec.norm_epsilon, time_conditioned=False, name=name)


def _middle(spec: VAESpec, name: str) -> list:
    ch = spec.block_channels[-1]
    return [
        _res(spec, ch, f"{name}_res_0"),
        VAEAttention(ch, spec.norm_groups, spec.norm_epsilon, name=f"{name}_attn"),
        _res(spec, ch, f"{name}_res_1"),
    ]


class VAEEncoder(BuildsOnFirstCall, keras.Model):
    """images [B,H,W,3] in [-1, 1] -> (mean, logvar), each [B, H/f, W/f, latent_channels]."""

    def __init__(self, spec: VAESpec, name: str = "vae_encoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.spec = spec
        last = len(spec.block_channels) - 1
        blocks = [conv(spec.block_channels[0], 3, "conv_in")]
        for i, ch in enumerate(spec.block_channels):
            blocks += [_res(spec, ch, f"down_{i}_res_{j}") for j in range(spec.layers_per_block)]
            if i < last:  # keras-cv / CompVis pad only bottom and right before the stride-2 conv
                blocks.append(Downsample(ch, pad=((0, 1), (0, 1)), name=f"down_{i}_downsample"))
        blocks += _middle(spec, "mid")
        self.blocks = blocks
        self.norm_out = group_norm(spec.norm_groups, spec.norm_epsilon, "norm_out")
        self.conv_out = conv(2 * spec.latent_channels, 3, "conv_out")
        self.quant_conv = conv(2 * spec.latent_channels, 1, "quant_conv")
        size = spec.downsampling_factor
        self(ops.zeros((1, size, size, spec.image_channels)))

    def call(self, images):
        x = images
        for block in self.blocks:
            x = block(x)
        moments = self.quant_conv(self.conv_out(ops.silu(self.norm_out(x))))
        mean, logvar = ops.split(moments, 2, axis=-1)
        return mean, ops.clip(logvar, *LOGVAR_RANGE)

    def keras_cv_layout(self) -> list[list]:
        """keras-cv's ImageEncoder (a Sequential) stores one group per block, in order."""
        return [flat_weights(b) for b in self.blocks + [self.norm_out, self.conv_out, self.quant_conv]]


class VAEDecoder(BuildsOnFirstCall, keras.Model):
    """scaled latents [B,h,w,c] -> images [B, h*f, w*f, 3] in about [-1, 1]."""

    def __init__(self, spec: VAESpec, name: str = "vae_decoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.spec = spec
        channels = list(reversed(spec.block_channels))
        blocks = [conv(spec.latent_channels, 1, "post_quant_conv"), conv(channels[0], 3, "conv_in")]
        blocks += _middle(spec, "mid")
        for i, ch in enumerate(channels):
            blocks += [_res(spec, ch, f"up_{i}_res_{j}") for j in range(spec.layers_per_block + 1)]
            if i < len(channels) - 1:
                blocks.append(Upsample(ch, name=f"up_{i}_upsample"))
        self.blocks = blocks
        self.norm_out = group_norm(spec.norm_groups, spec.norm_epsilon, "norm_out")
        self.conv_out = conv(spec.image_channels, 3, "conv_out")
        self(ops.zeros((1, 1, 1, spec.latent_channels)))

    def call(self, latents):
        x = latents / self.spec.scaling_factor
        for block in self.blocks:
            x = block(x)
        return self.conv_out(ops.silu(self.norm_out(x)))

    def keras_cv_layout(self) -> list[list]:
        """keras-cv's Decoder (a Sequential) stores one group per block, in order."""
        return [flat_weights(b) for b in self.blocks + [self.norm_out, self.conv_out]]
