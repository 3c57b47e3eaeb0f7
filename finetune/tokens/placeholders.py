"""The tokenizer of a run: the CLIP tokenizer with the learned placeholder added, and the
initializer text's token ids (the vocabulary rows the learned vectors start from)."""

from __future__ import annotations

from finetune.errors import ConfigError
from finetune.tokens.tokenizer import MAX_LENGTH, ClipTokenizer


def make_tokenizer(
    placeholder: str, num_vectors: int = 1, max_length: int = MAX_LENGTH, truncate: bool = False
) -> tuple[ClipTokenizer, list[int]]:
    """A tokenizer that knows `placeholder` (as `num_vectors` ids), and those ids."""
    if num_vectors < 1:
        raise ConfigError(f"token.num_vectors={num_vectors} must be >= 1")
    tokenizer = ClipTokenizer(max_length=max_length, truncate=truncate)
    try:
        tokenizer.add_placeholder(placeholder, num_vectors)
    except ConfigError as e:
        raise ConfigError(f"token.placeholder={placeholder}: {e}") from e
    return tokenizer, tokenizer.placeholder_ids(placeholder)


def initializer_ids(tokenizer: ClipTokenizer, initializer: str | None) -> list[int]:
    """Vocabulary ids of the initializer text ([] for none: the vectors start random)."""
    if not initializer:
        return []
    ids = tokenizer.encode(initializer)
    if not ids or any(i >= tokenizer.base_vocab_size for i in ids):
        raise ConfigError(f"token.initializer={initializer!r} must be plain text of the CLIP vocabulary")
    return ids
