"""Prompt weighting in AUTOMATIC1111's attention syntax, applied to the text encoder's output.

Syntax (the webui's documented rules; this is an independent implementation):

    (word)        weight x 1.1            ((word))  x 1.21
    [word]        weight / 1.1
    (word:1.3)    weight x 1.3            nesting multiplies
    \\( \\) \\[ \\]   literal brackets          an unclosed bracket applies to the rest of the prompt

The prompt is tokenized chunk by chunk (each chunk with its weight), the whole row is encoded
once, every token's hidden state is multiplied by its weight, and the result is rescaled so its
mean equals the unweighted encoding's mean (as the webui does). A prompt without weights is
encoded exactly as `PromptRenderer.encode` does.
"""

from __future__ import annotations

import re

import keras
import numpy as np

from finetune.errors import ConfigError

ROUND = 1.1  # weight of one pair of ( )
_TOKEN = re.compile(r"\\[()\[\]\\]|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:|\\")


def parse_weights(text: str) -> list[tuple[str, float]]:
    """`text` as (chunk, weight) pairs, adjacent chunks of equal weight merged."""
    chunks: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for chunk in chunks[start:]:
            chunk[1] *= factor

    for match in _TOKEN.finditer(text):
        token, number = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            chunks.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(chunks))
        elif token == "[":
            square_open.append(len(chunks))
        elif number is not None and round_open:
            scale(round_open.pop(), float(number))
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale(square_open.pop(), 1 / ROUND)
        else:
            chunks.append([token, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, 1 / ROUND)
    merged: list[tuple[str, float]] = []
    for text_, weight in chunks:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text_, weight)
        else:
            merged.append((text_, weight))
    return merged or [("", 1.0)]


def weighted_ids(tokenizer, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [max_length], weights float32 [max_length]) of one prompt; ConfigError if it is too long."""
    ids: list[int] = []
    weights: list[float] = []
    for chunk, weight in parse_weights(prompt):
        chunk_ids = tokenizer.encode(chunk)
        ids += chunk_ids
        weights += [weight] * len(chunk_ids)
    room = tokenizer.max_length - 2
    if len(ids) > room:
        short = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        raise ConfigError(f"prompt {short!r} has {len(ids) + 2} tokens (with start/end) but at most "
                          f"{tokenizer.max_length} fit; shorten it")
    row = np.full(tokenizer.max_length, tokenizer.pad_id, dtype=np.int32)
    row[0], row[1:1 + len(ids)], row[1 + len(ids)] = tokenizer.start_id, ids, tokenizer.end_id
    w = np.ones(tokenizer.max_length, dtype=np.float32)
    w[1:1 + len(ids)] = weights
    return row, w


def check_prompts(tokenizer, prompts: list[str]) -> None:
    """Every prompt parses and fits (ConfigError naming the first that does not)."""
    for prompt in prompts:
        weighted_ids(tokenizer, prompt)


def encode_weighted(tokenizer, text_encoder, prompts: list[str]) -> np.ndarray:
    """Text encodings [len(prompts), L, D] with the prompts' attention weights applied."""
    rows = [weighted_ids(tokenizer, p) for p in prompts]
    ids = np.stack([r[0] for r in rows])
    weights = np.stack([r[1] for r in rows])
    z = keras.ops.convert_to_numpy(text_encoder(ids)).astype(np.float32)
    for i in range(len(prompts)):
        if np.all(weights[i] == 1.0):
            continue
        original_mean = z[i].mean()
        z[i] = z[i] * weights[i][:, None]
        z[i] = z[i] * (original_mean / z[i].mean())
    return z
