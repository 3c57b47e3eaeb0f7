"""The judge of the quality metrics: a CLIP that embeds generated images and prompts in one space.

`ClipJudge` wraps a text encoder (the project's `TextEncoder`) and a `ClipImageModel`
(image tower + both projections). For the `tiny` preset both are the tiny CLIP the project
pretrained on its toy world (`model.judge` in finetune/configs/model/tiny.yaml); any CLIP with the
same two methods fits `finetune.evaluation.metrics`.
"""

from __future__ import annotations

import keras
import numpy as np

from finetune.errors import ConfigError
from finetune.models.weights import load_weights
from finetune.tokens.tokenizer import ClipTokenizer


def to_model_images(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] (or floats in [-1, 1]) -> float32 in [-1, 1], the models' image range."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 127.5 - 1.0
    return images.astype(np.float32)


class ClipJudge:
    def __init__(self, text_encoder, clip_model, tokenizer: ClipTokenizer, batch_size: int = 256):
        self.text_encoder, self.clip_model, self.tokenizer, self.batch_size = text_encoder, clip_model, tokenizer, batch_size

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit caption embeddings [N, D]."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            ids = self.tokenizer(texts[i : i + self.batch_size])
            hidden = self.text_encoder(ids)
            out.append(keras.ops.convert_to_numpy(self.clip_model.embed_text(hidden, ids, self.tokenizer.end_id)))
        return np.concatenate(out)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """Unit image embeddings [N, D] of uint8 images (or floats in [-1, 1])."""
        return np.concatenate([
            keras.ops.convert_to_numpy(self.clip_model(to_model_images(images[i : i + self.batch_size])))
            for i in range(0, len(images), self.batch_size)
        ])


def load_judge(judge, preset) -> ClipJudge | None:
    """The judge of `model.judge` (a JudgeConfig: its two files) for `preset`, or None when it names none."""
    from finetune.models import build_component
    from finetune.models.clip_image import ClipImageModel, get_clip_image_spec

    if judge is None or (judge.text_encoder is None and judge.clip_image is None):
        return None
    if judge.text_encoder is None or judge.clip_image is None:
        raise ConfigError("model.judge needs both text_encoder and clip_image (or neither, for no CLIP metrics)")
    text_encoder = build_component(preset, "text_encoder")
    load_weights(text_encoder, judge.text_encoder, "model.judge.text_encoder")
    clip_model = ClipImageModel(get_clip_image_spec(preset.name))
    load_weights(clip_model, judge.clip_image, "model.judge.clip_image")
    tokenizer = ClipTokenizer(max_length=preset.text_encoder.max_length, pad_id=preset.pad_id)
    return ClipJudge(text_encoder, clip_model, tokenizer)
