"""CLIP BPE tokenizer (ids identical to OpenAI CLIP's) with textual-inversion placeholders.

The BPE itself is done by `instant_clip_tokenizer` (a Rust port of OpenAI CLIP's
`simple_tokenizer.py` that ships the vocabulary, so nothing is downloaded at run time).
That package only lowercases its input; the text cleaning OpenAI's tokenizer applies
first (ftfy, HTML unescaping, whitespace collapsing) is done here, as is the one thing
the port does differently: OpenAI's tokenizer turns a literal "<|startoftext|>" or
"<|endoftext|>" in the text into the special ids, the port BPE-encodes it as punctuation.

Placeholders (the new words textual inversion learns) get ids from 49408 upwards.
A placeholder with `num_vectors > 1` stands for several consecutive ids, named like
the tokens diffusers adds: "<tok>" expands to "<tok> <tok>_1 ... <tok>_{n-1}".
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Iterable, Sequence
from pathlib import PurePath

import ftfy
import instant_clip_tokenizer
import numpy as np
import regex

from finetune.errors import ConfigError

logger = logging.getLogger("finetune.tokens")

# Facts about OpenAI CLIP's tokenizer (github.com/openai/CLIP, clip/simple_tokenizer.py):
# 256 byte tokens + 256 byte-end-of-word tokens + 48894 merges + 2 special tokens.
BASE_VOCAB_SIZE = 49408
START_OF_TEXT = 49406
END_OF_TEXT = 49407
MAX_LENGTH = 77  # CLIP text encoder context length

_START_TEXT = "<|startoftext|>"
_END_TEXT = "<|endoftext|>"
_SPECIAL_IDS = {_START_TEXT: START_OF_TEXT, _END_TEXT: END_OF_TEXT}

# The pre-tokenization pattern of OpenAI CLIP's simple_tokenizer.py (applied there to the
# cleaned, lowercased text). Only needed to find where a special-token literal starts a
# pre-token; the BPE of everything else is left to instant_clip_tokenizer.
_CLIP_PRETOKEN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


@functools.lru_cache(maxsize=1)
def _bpe() -> instant_clip_tokenizer.Tokenizer:
    return instant_clip_tokenizer.Tokenizer()


def clean_text(text: str) -> str:
    """OpenAI CLIP's text cleaning: ftfy, HTML-unescape twice, collapse whitespace, lowercase."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


@functools.lru_cache(maxsize=8192)
def _encode_plain(text: str) -> tuple[int, ...]:
    """Ids of `text` (no placeholders) exactly as OpenAI CLIP's `SimpleTokenizer.encode`."""
    text = clean_text(text)
    if _START_TEXT not in text and _END_TEXT not in text:
        return tuple(_bpe().encode(text))
    # Split at the special-token literals that CLIP's pre-tokenizer matches as a whole
    # (it does not when punctuation right before it swallows the "<"). Every split point is
    # a pre-token boundary, so encoding the pieces separately gives the same ids.
    ids: list[int] = []
    start = 0
    for match in _CLIP_PRETOKEN.finditer(text):
        special = _SPECIAL_IDS.get(match.group())
        if special is None:
            continue
        ids.extend(_bpe().encode(text[start : match.start()]))
        ids.append(special)
        start = match.end()
    ids.extend(_bpe().encode(text[start:]))
    return tuple(ids)


def vocabulary_id(text: str) -> int | None:
    """The id of `text` when CLIP's tokenizer reads it as one word of its vocabulary, else None.

    Tools that trigger an embedding on a word (AUTOMATIC1111 and ComfyUI use the file stem)
    match its token ids in the prompt: a stem that is one vocabulary word ("concept", id 6353)
    would pull the embedding into every prompt that uses that everyday word.
    """
    ids = _encode_plain(text)
    return ids[0] if len(ids) == 1 else None


def trigger_word(name: str) -> str:
    """`name` reduced to characters safe in a file name and a prompt word: letters, digits, '.',
    '_', '-' (spaces go too: ComfyUI splits prompt words on them). `<cat-toy>` -> `cat-toy`;
    may be empty."""
    return "".join(c for c in str(name) if c.isalnum() or c in "._-").strip(".")


def concept_placeholder(concept_dir: str | None) -> str | None:
    """The default placeholder of a concept folder: `<folder-name>`, or `<my-folder-name>` when
    the bare name is a CLIP vocabulary word (`cat/` -> `<my-cat>`), so that neither the
    placeholder nor the file stem of an export (`folder-name.safetensors`) is an everyday word.
    None without a folder (`finetune.evaluate` takes the placeholder from the embedding file)."""
    if concept_dir is None:
        return None
    word = trigger_word(PurePath(str(concept_dir)).name)
    if not word:
        return "<my-concept>"
    return f"<my-{word}>" if vocabulary_id(word) is not None else f"<{word}>"


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class ClipTokenizer:
    """Turns prompts into CLIP text-encoder input ids, `[B, max_length]` int32.

    Args:
        max_length: row length including the start and end tokens (CLIP: 77).
        pad_id: id filling the row after the end token (SD v1 / CLIP use the end id).
        truncate: if False a too-long prompt raises ConfigError; if True it is cut
            (keeping the end token) and a warning is logged.
    """

    def __init__(self, max_length: int = MAX_LENGTH, pad_id: int = END_OF_TEXT, truncate: bool = False):
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 2:
            raise ConfigError(
                f"tokenizer max_length must be an integer >= 2 (room for the start and end tokens), got {max_length!r}"
            )
        if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)) or not 0 <= pad_id < BASE_VOCAB_SIZE:
            raise ConfigError(f"tokenizer pad_id must be an id of the CLIP vocabulary (0..{BASE_VOCAB_SIZE - 1}), got {pad_id!r}")
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        self.truncate = bool(truncate)
        self.start_id = START_OF_TEXT
        self.end_id = END_OF_TEXT
        self.base_vocab_size = BASE_VOCAB_SIZE
        self._placeholders: dict[str, list[int]] = {}
        self._token_names: dict[str, int] = {}  # every added token string ("<tok>", "<tok>_1", ...) -> its id
        self._id_names: dict[int, str] = {}
        self._pattern: regex.Pattern | None = None

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        """Size of the embedding table needed: CLIP's vocabulary plus every placeholder id."""
        return self.base_vocab_size + len(self._id_names)

    @property
    def placeholders(self) -> dict[str, list[int]]:
        """Placeholder string -> its ids, in the order they were added (a copy)."""
        return {name: list(ids) for name, ids in self._placeholders.items()}

    def placeholder_ids(self, placeholder: str) -> list[int]:
        try:
            return list(self._placeholders[placeholder])
        except KeyError:
            known = ", ".join(repr(p) for p in self._placeholders) or "none"
            raise ConfigError(f"placeholder {placeholder!r} was not added to the tokenizer (added: {known})") from None

    def add_placeholder(self, placeholder: str, num_vectors: int = 1) -> list[int]:
        """Registers `placeholder` with `num_vectors` new consecutive ids and returns them."""
        if not isinstance(placeholder, str) or not placeholder:
            raise ConfigError(
                f"placeholder token must be a non-empty string, got {placeholder!r}; use a new word such as '<my-concept>'"
            )
        if isinstance(num_vectors, bool) or not isinstance(num_vectors, (int, np.integer)) or num_vectors < 1:
            raise ConfigError(f"num_vectors of placeholder {placeholder!r} must be an integer >= 1, got {num_vectors!r}")
        num_vectors = int(num_vectors)
        if _WHITESPACE.search(placeholder):
            raise ConfigError(
                f"placeholder {placeholder!r} contains whitespace; use a single word such as '<my-concept>'"
            )
        names = [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)]
        if placeholder in self._placeholders:
            raise ConfigError(f"placeholder {placeholder!r} was already added; give each concept its own placeholder")
        for name in names:
            if name in self._token_names:
                raise ConfigError(
                    f"placeholder {placeholder!r} needs the token {name!r}, which another placeholder already uses; "
                    "choose a different placeholder"
                )
        base = _encode_plain(placeholder)
        if len(base) == 1:
            raise ConfigError(
                f"placeholder {placeholder!r} is already a word of the CLIP vocabulary (id {base[0]}); "
                "choose a new word such as '<my-concept>'"
            )
        if not base:
            raise ConfigError(
                f"placeholder {placeholder!r} is removed by CLIP's text cleaning; use visible characters such as '<my-concept>'"
            )
        first = self.vocab_size
        ids = list(range(first, first + num_vectors))
        self._placeholders[placeholder] = ids
        for name, token_id in zip(names, ids):
            self._token_names[name] = token_id
            self._id_names[token_id] = name
        # Longest first, so a placeholder that contains another one wins.
        alternatives = sorted(self._token_names, key=len, reverse=True)
        self._pattern = regex.compile("|".join(regex.escape(name) for name in alternatives))
        return list(ids)

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str) -> list[int]:
        """Ids of `text` without start/end tokens; placeholders become their ids."""
        if not isinstance(text, str):
            raise ConfigError(f"a prompt must be a string, got {type(text).__name__}: {text!r}")
        if self._pattern is None:
            return list(_encode_plain(text))
        ids: list[int] = []
        start = 0
        for match in self._pattern.finditer(text):
            ids.extend(_encode_plain(text[start : match.start()]))
            name = match.group()
            if name in self._placeholders:
                ids.extend(self._placeholders[name])
            else:
                ids.append(self._token_names[name])
            start = match.end()
        ids.extend(_encode_plain(text[start:]))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """int32 `[B, max_length]`: start id, the prompt's ids, end id, then `pad_id`."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        out = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int32)
        room = self.max_length - 2
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > room:
                count = len(ids) + 2
                if not self.truncate:
                    raise ConfigError(
                        f"prompt {_short(text)} has {count} tokens (with start/end) but at most {self.max_length} fit; "
                        "shorten it (a caption sidecar .txt, a template, an eval prompt) or set token.truncate_long_prompts=true"
                    )
                logger.warning(
                    "prompt %s has %d tokens (with start/end); truncated to %d", _short(text), count, self.max_length
                )
                ids = ids[:room]
            out[row, 0] = self.start_id
            out[row, 1 : 1 + len(ids)] = ids
            out[row, 1 + len(ids)] = self.end_id
        return out

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Readable text of `ids` (for debugging; CLIP's cleaning is not reversible).

        With `skip_special`, start tokens are dropped and decoding stops at the first end
        token (so a padded row decodes to just its prompt).
        """
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        pieces: list[str] = []
        run: list[int] = []

        def flush() -> None:
            if run:
                pieces.append(_bpe().decode(run))
                run.clear()

        i = 0
        while i < len(ids):
            token = ids[i]
            if token in (START_OF_TEXT, END_OF_TEXT):
                if skip_special and token == END_OF_TEXT:
                    break
                if not skip_special:
                    flush()
                    pieces.append((_START_TEXT if token == START_OF_TEXT else _END_TEXT) + " ")
                i += 1
            elif 0 <= token < START_OF_TEXT:
                run.append(token)
                i += 1
            elif token in self._id_names:
                flush()
                name = self._id_names[token]
                group = self._placeholders.get(name)
                if group is not None and ids[i : i + len(group)] == group:
                    i += len(group)
                else:
                    i += 1
                pieces.append(name + " ")
            else:
                raise ValueError(f"token id {token} is not in the vocabulary (size {self.vocab_size})")
        flush()
        return _WHITESPACE.sub(" ", "".join(pieces)).strip()

    def __repr__(self) -> str:
        return (
            f"ClipTokenizer(max_length={self.max_length}, pad_id={self.pad_id}, truncate={self.truncate}, "
            f"placeholders={self.placeholders})"
        )
