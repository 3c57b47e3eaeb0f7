"""Building blocks of the Stable Diffusion v1 family, one Keras layer each.

Every block creates its sub-layers in the order keras-cv 0.9.0 does, so that a block's
`weights` list lines up with the weights keras-cv stores for the same block in its
legacy `.h5` files (see `finetune.models.weights`). Every sub-layer has a fixed name,
so variable paths such as `unet/down_1_res_0/conv1/kernel` are stable across runs.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops


def quick_gelu(x):
    """CLIP's activation: x * sigmoid(1.702 x)."""
    return x * ops.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": lambda x: ops.gelu(x, approximate=False)}


def conv(filters: int, kernel_size: int, name: str) -> layers.Conv2D:
    """A stride-1 convolution that keeps the spatial size ('same' == symmetric padding here)."""
    return layers.Conv2D(filters, kernel_size, padding="same", name=name)


class GroupNorm(layers.GroupNormalization):
    """keras' GroupNormalization (same weights, same result) computed ~2x faster on CPU for NHWC.

    keras reduces a [B, H, W, G, C/G] view over its axes 1, 2 and 4, which TensorFlow's CPU
    kernels do slowly. Here every reduction runs over the spatial axes only (a per-channel
    sum, the fast kind), and the few per-channel sums are then added up per group: a
    two-pass mean and variance, in float32 as keras does.
    """

    def call(self, inputs):
        if len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return super().call(inputs)
        channels = inputs.shape[-1]
        per_group = channels // self.groups
        x = ops.cast(inputs, "float32")
        shape = ops.shape(x)
        count = ops.cast(shape[1] * shape[2] * per_group, "float32")

        def group_mean(per_channel_sum):  # [B, C] -> [B, 1, 1, C]: the mean of each channel's group
            sums = ops.sum(ops.reshape(per_channel_sum, (-1, self.groups, per_group)), axis=-1) / count
            return ops.repeat(sums, per_group, axis=-1)[:, None, None, :]

        centered = x - group_mean(ops.sum(x, axis=(1, 2)))
        inv = ops.rsqrt(group_mean(ops.sum(ops.square(centered), axis=(1, 2))) + self.epsilon)
        if self.scale:
            inv = inv * ops.cast(self.gamma, "float32")
        out = centered * inv
        if self.center:
            out = out + ops.cast(self.beta, "float32")
        return ops.cast(out, self.compute_dtype)


def group_norm(groups: int, epsilon: float, name: str) -> layers.GroupNormalization:
    return GroupNorm(groups=groups, epsilon=epsilon, name=name)


def timestep_embedding(timesteps, dim: int, max_period: float):
    """Sinusoidal embedding [cos | sin] of (float) timesteps, shape [B, dim] (DDPM / SD v1)."""
    half = dim // 2
    freqs = ops.exp(-math.log(max_period) * ops.arange(0, half, dtype="float32") / half)
    args = ops.cast(ops.reshape(timesteps, (-1, 1)), "float32") * freqs[None]
    return ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)


class BuildsOnFirstCall:
    """Mixin for a layer made of sublayers, which create their weights when it is first called.

    Without a `build()` of its own, Keras builds such a layer by first tracing its `call()`
    symbolically, and every composite layer inside it again at each nesting level: seconds per
    model. This build does nothing; the first real call builds the sublayers (the models call
    themselves once on zeros in `__init__`, so every weight exists right after construction).
    """

    def build(self, input_shape=None):
        pass


class ResBlock(layers.Layer):
    """GroupNorm-swish-conv twice, an optional timestep projection between, a 1x1 skip when widths differ."""

    def __init__(self, channels: int, groups: int, epsilon: float, time_conditioned: bool, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.norm1 = group_norm(groups, epsilon, "norm1")
        self.conv1 = conv(channels, 3, "conv1")
        self.time_proj = layers.Dense(channels, name="time_proj") if time_conditioned else None
        self.norm2 = group_norm(groups, epsilon, "norm2")
        self.conv2 = conv(channels, 3, "conv2")
        self.skip = None

    def build(self, input_shape):
        x_shape = input_shape[0] if self.time_proj is not None else input_shape
        if x_shape[-1] != self.channels:
            self.skip = conv(self.channels, 1, "skip")

    def call(self, inputs):
        x, t_emb = inputs if self.time_proj is not None else (inputs, None)
        h = self.conv1(ops.silu(self.norm1(x)))
        if t_emb is not None:
            h = h + self.time_proj(ops.silu(t_emb))[:, None, None, :]
        h = self.conv2(ops.silu(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


class Attention(BuildsOnFirstCall, layers.Layer):
    """Multi-head attention over [B, T, C] sequences (self-attention when `context` is None)."""

    def __init__(self, num_heads: int, head_dim: int, qkv_bias: bool, causal: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_dim, self.causal = num_heads, head_dim, causal
        width = num_heads * head_dim
        self.to_q = layers.Dense(width, use_bias=qkv_bias, name="to_q")
        self.to_k = layers.Dense(width, use_bias=qkv_bias, name="to_k")
        self.to_v = layers.Dense(width, use_bias=qkv_bias, name="to_v")
        self.to_out = layers.Dense(width, name="to_out")

    def _heads(self, x):
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1], self.num_heads, self.head_dim))

    def call(self, x, context=None):
        context = x if context is None else context
        q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(context)), self._heads(self.to_v(context))
        out = ops.dot_product_attention(q, k, v, scale=self.head_dim**-0.5, is_causal=self.causal)
        shape = ops.shape(x)
        return self.to_out(ops.reshape(out, (shape[0], shape[1], self.num_heads * self.head_dim)))


class GEGLUFeedForward(BuildsOnFirstCall, layers.Layer):
    """Dense to 2 x 4C, gate one half with GELU of the other, Dense back to C."""

    def __init__(self, channels: int, gelu: str, **kwargs):
        super().__init__(**kwargs)
        self.inner = 4 * channels
        self.approximate = {"tanh": True, "erf": False}[gelu]
        self.proj_in = layers.Dense(2 * self.inner, name="proj_in")
        self.proj_out = layers.Dense(channels, name="proj_out")

    def call(self, x):
        # ops.split, not two slices: the gradient of a split is one concat, of slices two
        # StridedSliceGrad ops writing into zero tensors (4-6% of an sd_v1 step, docs/benchmarks.md).
        h, gate = ops.split(self.proj_in(x), 2, axis=-1)
        return self.proj_out(h * ops.gelu(gate, approximate=self.approximate))


class SpatialTransformer(BuildsOnFirstCall, layers.Layer):
    """GroupNorm, 1x1 in, one transformer block (self-attn, cross-attn on the text, GEGLU), 1x1 out, residual."""

    def __init__(self, channels: int, num_heads: int, groups: int, epsilon: float, gelu: str,
                 group_epsilon: float | None = None, **kwargs):
        super().__init__(**kwargs)
        head_dim = channels // num_heads
        self.norm = group_norm(groups, epsilon if group_epsilon is None else group_epsilon, "norm")
        self.proj_in = conv(channels, 1, "proj_in")
        self.norm1 = layers.LayerNormalization(epsilon=epsilon, name="norm1")
        self.attn1 = Attention(num_heads, head_dim, qkv_bias=False, name="attn1")
        self.norm2 = layers.LayerNormalization(epsilon=epsilon, name="norm2")
        self.attn2 = Attention(num_heads, head_dim, qkv_bias=False, name="attn2")
        self.norm3 = layers.LayerNormalization(epsilon=epsilon, name="norm3")
        self.ff = GEGLUFeedForward(channels, gelu, name="ff")
        self.proj_out = conv(channels, 1, "proj_out")

    def call(self, inputs):
        x, context = inputs
        shape = ops.shape(x)
        h = self.proj_in(self.norm(x))
        h = ops.reshape(h, (shape[0], shape[1] * shape[2], shape[3]))
        h = self.attn1(self.norm1(h)) + h
        h = self.attn2(self.norm2(h), context) + h
        h = self.ff(self.norm3(h)) + h
        h = ops.reshape(h, shape)
        return self.proj_out(h) + x


class VAEAttention(BuildsOnFirstCall, layers.Layer):
    """Single-head self-attention over all pixels, used in the VAE's middle blocks."""

    def __init__(self, channels: int, groups: int, epsilon: float, **kwargs):
        super().__init__(**kwargs)
        self.norm = group_norm(groups, epsilon, "norm")
        self.to_q = conv(channels, 1, "to_q")
        self.to_k = conv(channels, 1, "to_k")
        self.to_v = conv(channels, 1, "to_v")
        self.to_out = conv(channels, 1, "to_out")

    def call(self, x):
        shape = ops.shape(x)
        h = self.norm(x)
        seq = (shape[0], shape[1] * shape[2], 1, shape[3])
        q, k, v = (ops.reshape(f(h), seq) for f in (self.to_q, self.to_k, self.to_v))
        out = ops.dot_product_attention(q, k, v, scale=ops.rsqrt(ops.cast(shape[3], "float32")))
        return self.to_out(ops.reshape(out, shape)) + x


class Downsample(BuildsOnFirstCall, layers.Layer):
    """Stride-2 3x3 convolution after explicit zero padding (`pad` as ZeroPadding2D takes it)."""

    def __init__(self, channels: int, pad, **kwargs):
        super().__init__(**kwargs)
        self.pad = layers.ZeroPadding2D(pad, name="pad")
        self.conv = layers.Conv2D(channels, 3, strides=2, name="conv")

    def call(self, x):
        return self.conv(self.pad(x))


class Upsample(BuildsOnFirstCall, layers.Layer):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.up = layers.UpSampling2D(2, name="up")
        self.conv = conv(channels, 3, "conv")

    def call(self, x):
        return self.conv(self.up(x))


def flat_weights(*blocks: keras.layers.Layer) -> list:
    """All variables of `blocks`, in order."""
    return [w for block in blocks for w in block.weights]
