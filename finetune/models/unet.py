"""The SD v1 denoising UNet, read top to bottom: time embedding, down path, middle, up path, output."""

from __future__ import annotations

import keras
from keras import layers, ops

from finetune.models.layers import (
    BuildsOnFirstCall,
    Downsample,
    ResBlock,
    SpatialTransformer,
    Upsample,
    conv,
    flat_weights,
    group_norm,
    timestep_embedding,
)
from finetune.models.presets import UNetSpec


class UNet(BuildsOnFirstCall, keras.Model):
    """(noisy latents [B,h,w,c], timesteps [B], text context [B,L,D]) -> predicted noise [B,h,w,c]."""

    def __init__(self, spec: UNetSpec, name: str = "unet", **kwargs):
        super().__init__(name=name, **kwargs)
        self.spec = spec
        # True: keep only each ResBlock's and transformer's inputs for the backward pass and recompute
        # the rest (less activation memory, one more forward of those blocks per step).
        self.gradient_checkpointing = False
        s = spec
        res = lambda ch, name: ResBlock(ch, s.norm_groups, s.norm_epsilon, time_conditioned=True, name=name)  # noqa: E731
        attn = lambda ch, name: SpatialTransformer(  # noqa: E731
            ch, s.num_heads, s.norm_groups, s.norm_epsilon, s.gelu, group_epsilon=s.transformer_norm_epsilon, name=name
        )
        last = len(s.block_channels) - 1

        self.time_dense1 = layers.Dense(s.time_embedding_dim, name="time_dense1")
        self.time_dense2 = layers.Dense(s.time_embedding_dim, name="time_dense2")
        self.conv_in = conv(s.block_channels[0], 3, "conv_in")

        # Down path: each level is a list of (resblock, transformer-or-None), then a downsampler (not on the last level).
        self.down_levels, self.downsamplers = [], []
        for i, ch in enumerate(s.block_channels):
            self.down_levels.append(
                [
                    (res(ch, f"down_{i}_res_{j}"), attn(ch, f"down_{i}_attn_{j}") if s.attention[i] else None)
                    for j in range(s.layers_per_block)
                ]
            )
            self.downsamplers.append(Downsample(ch, pad=1, name=f"down_{i}_downsample") if i < last else None)

        top = s.block_channels[-1]
        self.mid_res1 = res(top, "mid_res_0")
        self.mid_attn = attn(top, "mid_attn")
        self.mid_res2 = res(top, "mid_res_1")

        # Up path mirrors the down path with one more block per level, each eating one skip connection.
        self.up_levels, self.upsamplers = [], []
        for i in reversed(range(len(s.block_channels))):
            ch = s.block_channels[i]
            self.up_levels.append(
                [
                    (res(ch, f"up_{i}_res_{j}"), attn(ch, f"up_{i}_attn_{j}") if s.attention[i] else None)
                    for j in range(s.layers_per_block + 1)
                ]
            )
            self.upsamplers.append(Upsample(ch, name=f"up_{i}_upsample") if i > 0 else None)

        self.norm_out = group_norm(s.norm_groups, s.norm_epsilon, "norm_out")
        self.conv_out = conv(s.latent_channels, 3, "conv_out")
        size = 2 ** len(s.block_channels)
        self(ops.zeros((1, size, size, s.latent_channels)), ops.zeros((1,)), ops.zeros((1, 1, s.context_dim)))

    def _run(self, block, x, cond):
        """`block([x, cond])`, rematerialized in the backward pass when gradient checkpointing is on."""
        if self.gradient_checkpointing:
            return keras.remat(lambda a, b: block([a, b]))(x, cond)
        return block([x, cond])

    def call(self, latents, timesteps, context):
        t = timestep_embedding(timesteps, self.spec.block_channels[0], self.spec.max_period)
        t = self.time_dense2(ops.silu(self.time_dense1(t)))

        x = self.conv_in(latents)
        skips = [x]
        for blocks, downsample in zip(self.down_levels, self.downsamplers):
            for resblock, transformer in blocks:
                x = self._run(resblock, x, t)
                if transformer is not None:
                    x = self._run(transformer, x, context)
                skips.append(x)
            if downsample is not None:
                x = downsample(x)
                skips.append(x)

        x = self._run(self.mid_res2, self._run(self.mid_attn, self._run(self.mid_res1, x, t), context), t)

        for blocks, upsample in zip(self.up_levels, self.upsamplers):
            for resblock, transformer in blocks:
                x = self._run(resblock, ops.concatenate([x, skips.pop()], axis=-1), t)
                if transformer is not None:
                    x = self._run(transformer, x, context)
            if upsample is not None:
                x = upsample(x)

        return self.conv_out(ops.silu(self.norm_out(x)))

    def _blocks_in_order(self) -> list:
        blocks = []
        for level, downsample in zip(self.down_levels, self.downsamplers):
            blocks += [b for pair in level for b in pair if b is not None] + ([downsample] if downsample else [])
        blocks += [self.mid_res1, self.mid_attn, self.mid_res2]
        for level, upsample in zip(self.up_levels, self.upsamplers):
            blocks += [b for pair in level for b in pair if b is not None] + ([upsample] if upsample else [])
        return blocks

    def keras_cv_layout(self) -> list[list]:
        """Weights grouped and ordered as keras-cv's DiffusionModel stores them (its functional
        graph lists the first time Dense, then conv_in, then the second time Dense)."""
        head = [flat_weights(self.time_dense1), flat_weights(self.conv_in), flat_weights(self.time_dense2)]
        tail = [flat_weights(self.norm_out), flat_weights(self.conv_out)]
        return head + [flat_weights(b) for b in self._blocks_in_order()] + tail
