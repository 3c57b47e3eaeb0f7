"""The CLIP text encoder of SD v1: token + position embeddings, pre-norm causal transformer, final LayerNorm."""

from __future__ import annotations

import keras
from keras import layers, ops

from finetune.models.layers import ACTIVATIONS, Attention, BuildsOnFirstCall, flat_weights
from finetune.models.presets import TextEncoderSpec
from finetune.tokens.embedding import PlaceholderEmbedding


class CLIPEncoderLayer(BuildsOnFirstCall, layers.Layer):
    def __init__(self, spec: TextEncoderSpec, **kwargs):
        super().__init__(**kwargs)
        self.activation = ACTIVATIONS[spec.activation]
        self.norm1 = layers.LayerNormalization(epsilon=spec.norm_epsilon, name="norm1")
        self.attn = Attention(spec.num_heads, spec.width // spec.num_heads, qkv_bias=True, causal=True, name="attn")
        self.norm2 = layers.LayerNormalization(epsilon=spec.norm_epsilon, name="norm2")
        self.fc1 = layers.Dense(spec.width * spec.mlp_ratio, name="fc1")
        self.fc2 = layers.Dense(spec.width, name="fc2")

    def call(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.activation(self.fc1(self.norm2(x))))


class TextEncoder(BuildsOnFirstCall, keras.Model):
    """token ids [B, L] -> hidden states [B, L, width] (after the final LayerNorm, as SD v1 uses them)."""

    def __init__(self, spec: TextEncoderSpec, num_placeholder_vectors: int = 0, name: str = "text_encoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.spec = spec
        self.token_embedding = PlaceholderEmbedding(
            spec.vocab_size, spec.width, num_placeholder_vectors, name="token_embedding"
        )
        self.position_embedding = layers.Embedding(spec.max_length, spec.width, name="position_embedding")
        self.encoder_layers = [CLIPEncoderLayer(spec, name=f"layer_{i}") for i in range(spec.num_layers)]
        self.final_norm = layers.LayerNormalization(epsilon=spec.norm_epsilon, name="final_norm")
        self(ops.zeros((1, spec.max_length), dtype="int32"))  # build every variable now

    def call(self, token_ids):
        positions = ops.arange(ops.shape(token_ids)[1])
        x = self.token_embedding(token_ids) + self.position_embedding(positions)[None]
        for layer in self.encoder_layers:
            x = layer(x)
        return self.final_norm(x)

    def keras_cv_layout(self) -> list[list]:
        """Weights grouped and ordered as keras-cv's TextEncoder stores them in its .h5 files."""
        embeddings = [self.token_embedding.table, *self.position_embedding.weights]
        return [embeddings] + [flat_weights(layer) for layer in self.encoder_layers] + [flat_weights(self.final_norm)]
