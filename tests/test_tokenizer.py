"""ClipTokenizer: ids identical to OpenAI CLIP's tokenizer, plus textual-inversion placeholders."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest

from finetune.errors import ConfigError
from finetune.tokens.tokenizer import (
    BASE_VOCAB_SIZE,
    END_OF_TEXT,
    MAX_LENGTH,
    START_OF_TEXT,
    ClipTokenizer,
)

try:  # tests/ run as rootdir-relative package or as plain folder on sys.path
    from tests.clip_reference import clip_reference  # noqa: F401  (pytest fixture)
except ImportError:
    from clip_reference import clip_reference  # noqa: F401

LONG_WORDS = (
    "a highly detailed matte painting of a majestic castle on a cliff above a stormy sea at sunset, "
    "dramatic lighting, volumetric clouds, trending on artstation, by greg rutkowski and alphonse mucha, "
    "octane render, 8k, ultra wide angle, cinematic composition, golden hour, intricate details, sharp focus"
)

CORPUS = [
    "a photo of a cat",
    "",
    "   ",
    "A PHOTO OF A CAT",
    "MiXeD CaSe WoRdS",
    "Hello, world! How are you?",
    "a cat; a dog: a bird... (and) [more] {things} <html> \"quotes\" 'single'",
    "e-mail me @ foo_bar#baz $100 50% ^caret* ~tilde` |pipe| back\\slash",
    "1234567890 3.14159 1,000,000 2024-01-01 10:30pm",
    "it's a dog's life, don't stop, they're here, we've been, I'm fine, you'll see, he'd go",
    "IT'S THEY'RE WE'VE I'M YOU'LL HE'D DON'T",
    "rock &amp; roll",
    "i &lt;3 you",
    "it&#39;s &quot;quoted&quot; &gt; &nbsp;space",
    "double escaped &amp;amp; and &amp;lt;3",
    "café naïve résumé Ångström façade",
    "Straße größe ÜBER",
    "東京タワーの写真",
    "一只可爱的猫",
    "고양이 사진",
    "Привет мир, ЗДРАВСТВУЙ",
    "Ελληνικά ΣΟΦΟΣ",
    "مرحبا بالعالم",
    "a cat 🐱 with a party hat 🎉🎉 👩‍👩‍👧 🇫🇷",
    "mojibake: Ã©tÃ© Ã  la plage",
    "more mojibake â€œquotedâ€\x9d and donâ€™t",
    "multiple    spaces\tand\ttabs\nand\nnewlines\r\n end",
    "\u00a0non-breaking\u2003em-space\u3000ideographic space ",
    "zero\u200bwidth joiner\u200d and soft\u00adhyphen",
    "ﬁne ligatures ﬂ and fullwidth ＡＢＣ１２３",
    "İstanbul ǅemal ẞ Kelvin K Ohm Ω",
    "superscripts x² ½ ① ٣",
    "<|startoftext|>hi<|endoftext|>",
    "a<|endoftext|>b !<|endoftext|> <|ENDOFTEXT|>",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???...,,,;;;",
    LONG_WORDS,
    "a " * 75,  # exactly 77 with start/end
    "a " * 76,  # one too many
    LONG_WORDS + " " + LONG_WORDS,  # far too long
]


def reference_row(ref, text: str) -> list[int]:
    return [START_OF_TEXT] + ref.encode(text) + [END_OF_TEXT]


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer()


# ------------------------------------------------------------------ equality with OpenAI CLIP


def test_hard_anchor(tok):
    row = tok("a photo of a cat")
    assert row.shape == (1, MAX_LENGTH) and row.dtype == np.int32
    expected = [49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * (MAX_LENGTH - 7)
    assert row[0].tolist() == expected
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]


def test_constants(tok):
    assert (BASE_VOCAB_SIZE, START_OF_TEXT, END_OF_TEXT, MAX_LENGTH) == (49408, 49406, 49407, 77)
    assert (tok.start_id, tok.end_id, tok.pad_id, tok.max_length) == (49406, 49407, 49407, 77)
    assert tok.base_vocab_size == tok.vocab_size == 49408


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_matches_reference(clip_reference, tok, text):
    ref = clip_reference()
    assert len(ref.encoder) == BASE_VOCAB_SIZE
    expected = reference_row(ref, text)
    assert [START_OF_TEXT] + tok.encode(text) + [END_OF_TEXT] == expected
    if len(expected) <= MAX_LENGTH:
        row = tok(text)[0].tolist()
        assert row == expected + [END_OF_TEXT] * (MAX_LENGTH - len(expected))
    else:
        with pytest.raises(ConfigError):
            tok(text)


def test_corpus_covers_the_length_limit(clip_reference):
    ref = clip_reference()
    lengths = [len(reference_row(ref, text)) for text in CORPUS]
    assert MAX_LENGTH in lengths and MAX_LENGTH + 1 in lengths
    assert any(60 < n < MAX_LENGTH for n in lengths)


def test_random_strings_match_reference(clip_reference, tok):
    ref = clip_reference()
    rnd = random.Random(1234)
    ranges = [(0x20, 0x7F), (0xA0, 0x250), (0x370, 0x400), (0x3040, 0x3100), (0x4E00, 0x4E80), (0x1F300, 0x1F680)]
    alphabet = [chr(c) for lo, hi in ranges for c in range(lo, hi)] + list("'''   \t\n&;#<>|") + ["&amp;", "&lt;", "'s"]
    for _ in range(1500):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 40)))
        assert tok.encode(text) == ref.encode(text), repr(text)


def test_batch_padding_and_custom_lengths(clip_reference):
    ref = clip_reference()
    texts = ["a photo of a cat", "Hello, world!", ""]
    rows = ClipTokenizer(max_length=12, pad_id=0)(texts)
    assert rows.shape == (3, 12) and rows.dtype == np.int32
    for row, text in zip(rows.tolist(), texts):
        expected = reference_row(ref, text)
        assert row == expected + [0] * (12 - len(expected))
    assert ClipTokenizer()([]).shape == (0, MAX_LENGTH)


# ------------------------------------------------------------------ placeholders


def test_placeholder_gets_new_id(clip_reference):
    ref = clip_reference()
    tok = ClipTokenizer()
    assert tok.add_placeholder("<cat-toy>") == [49408]
    assert tok.vocab_size == 49409
    assert tok.placeholder_ids("<cat-toy>") == [49408]
    assert tok.placeholders == {"<cat-toy>": [49408]}
    assert tok.encode("a photo of <cat-toy>") == ref.encode("a photo of") + [49408]
    row = tok("a photo of <cat-toy>")[0].tolist()
    assert row[:6] == [START_OF_TEXT, 320, 1125, 539, 49408, END_OF_TEXT]
    assert all(i < 49408 for i in tok.encode("a photo of <CAT-TOY>"))  # case-sensitive
    assert tok.encode("a photo of <CAT-TOY>") == ref.encode("a photo of <CAT-TOY>")
    assert tok.decode(row) == "a photo of <cat-toy>"


@pytest.mark.parametrize(
    "template",
    ["a photo of {}", "{},", "a {}'s toy", "({})", "{}!! on a table", "a {}, a {}.", "  {}\tin   the snow  ", "&lt;3 {} &amp; me"],
)
def test_placeholder_in_place_of_a_word(clip_reference, template):
    """The placeholder's ids sit exactly where the ids of a one-token word would."""
    ref = clip_reference()
    tok = ClipTokenizer()
    (ph,) = tok.add_placeholder("<cat-toy>")
    (dog,) = ref.encode("dog")
    expected = [ph if i == dog else i for i in ref.encode(template.replace("{}", "dog"))]
    assert tok.encode(template.replace("{}", "<cat-toy>")) == expected


def test_placeholder_adjacent_to_punctuation(clip_reference):
    ref = clip_reference()
    tok = ClipTokenizer()
    (ph,) = tok.add_placeholder("<cat-toy>")
    assert tok.encode("<cat-toy>,") == [ph] + ref.encode(",")
    assert tok.encode("a <cat-toy>'s") == ref.encode("a") + [ph] + ref.encode("'s")
    assert ref.encode("'s") == ref.encode("dog's")[1:]  # CLIP splits "'s" off a word


def test_multi_vector_placeholder(clip_reference):
    ref = clip_reference()
    tok = ClipTokenizer()
    ids = tok.add_placeholder("<cat-toy>", num_vectors=3)
    assert ids == [49408, 49409, 49410]
    assert tok.vocab_size == 49411
    assert tok.placeholders == {"<cat-toy>": ids}
    assert tok.encode("a <cat-toy> on a table") == ref.encode("a") + ids + ref.encode("on a table")
    # The names of the single vectors (diffusers convention: "<tok>" = "<tok> <tok>_1 <tok>_2") are tokens too.
    assert tok.encode("<cat-toy>_1 <cat-toy>_2,") == [49409, 49410] + ref.encode(",")
    row = tok("a <cat-toy> on a table")[0].tolist()
    assert row[2:5] == ids
    assert tok.decode(row) == "a <cat-toy> on a table"
    assert tok.decode([49409, 49410]) == "<cat-toy>_1 <cat-toy>_2"
    with pytest.raises(ConfigError, match="<cat-toy>_1"):
        tok.add_placeholder("<cat-toy>_1")


def test_two_placeholders(clip_reference):
    ref = clip_reference()
    tok = ClipTokenizer()
    a = tok.add_placeholder("<cat-toy>")
    b = tok.add_placeholder("<dog-toy>", num_vectors=2)
    c = tok.add_placeholder("<cat-toy>-xl")  # contains the first one: longest match wins
    assert (a, b, c) == ([49408], [49409, 49410], [49411])
    assert tok.vocab_size == 49412
    assert tok.placeholders == {"<cat-toy>": a, "<dog-toy>": b, "<cat-toy>-xl": c}
    assert tok.encode("<cat-toy> and <dog-toy>") == a + ref.encode("and") + b
    assert tok.encode("<dog-toy><cat-toy>") == b + a
    assert tok.encode("<cat-toy>-xl <cat-toy>-x") == c + a + ref.encode("-x")
    assert tok.decode(tok("<cat-toy> and <dog-toy>, <cat-toy>-xl")[0]) == "<cat-toy> and <dog-toy> , <cat-toy>-xl"


@pytest.mark.parametrize(
    ("placeholder", "message"),
    [
        ("cat", "already a word of the CLIP vocabulary"),
        ("Cat", "already a word of the CLIP vocabulary"),
        ("*", "already a word of the CLIP vocabulary"),
        ("", "non-empty"),
        ("a b", "whitespace"),
        ("<a\tb>", "whitespace"),
        ("\ufeff", "removed by CLIP's text cleaning"),
    ],
)
def test_bad_placeholders(placeholder, message):
    tok = ClipTokenizer()
    with pytest.raises(ConfigError, match=message) as info:
        tok.add_placeholder(placeholder)
    assert "\n" not in str(info.value)
    if placeholder:
        assert repr(placeholder) in str(info.value)
    assert tok.vocab_size == BASE_VOCAB_SIZE and tok.placeholders == {}


def test_duplicate_placeholder_and_bad_arguments():
    tok = ClipTokenizer()
    tok.add_placeholder("<cat-toy>")
    with pytest.raises(ConfigError, match="'<cat-toy>' was already added"):
        tok.add_placeholder("<cat-toy>")
    with pytest.raises(ConfigError, match="num_vectors"):
        tok.add_placeholder("<dog-toy>", num_vectors=0)
    with pytest.raises(ConfigError, match="not added"):
        tok.placeholder_ids("<dog-toy>")
    assert tok.vocab_size == 49409
    for kwargs in ({"max_length": 1}, {"pad_id": 49408}, {"pad_id": -1}):
        with pytest.raises(ConfigError):
            ClipTokenizer(**kwargs)
    with pytest.raises(ConfigError, match="must be a string"):
        tok([None])


# ------------------------------------------------------------------ length limit


def test_too_long_prompt_raises(tok):
    text = "a " * 76
    with pytest.raises(ConfigError) as info:
        tok(["short", text])
    message = str(info.value)
    assert "\n" not in message
    assert repr(text[:60] + "...") in message and "78 tokens" in message


def test_too_long_prompt_truncated_with_warning(clip_reference, caplog):
    ref = clip_reference()
    tok = ClipTokenizer(truncate=True)
    tok.add_placeholder("<cat-toy>", num_vectors=2)
    text = LONG_WORDS + " <cat-toy> " + LONG_WORDS
    with caplog.at_level(logging.WARNING, logger="finetune.tokens"):
        rows = tok([text, "a photo of <cat-toy>"])
    assert rows.shape == (2, MAX_LENGTH) and rows.dtype == np.int32
    full = tok.encode(text)
    assert len(full) + 2 > MAX_LENGTH
    assert rows[0].tolist() == [START_OF_TEXT] + full[: MAX_LENGTH - 2] + [END_OF_TEXT]
    assert rows[0, :1 + len(ref.encode(LONG_WORDS)) + 2].tolist()[-2:] == [49408, 49409]
    assert rows[1].tolist()[:7] == [START_OF_TEXT, 320, 1125, 539, 49408, 49409, END_OF_TEXT]
    warnings = [r for r in caplog.records if r.name == "finetune.tokens" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "truncated" in warnings[0].getMessage()
    # A prompt that fits exactly is left alone and not warned about.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="finetune.tokens"):
        row = tok("a " * 75)[0].tolist()
    assert row == [START_OF_TEXT] + [320] * 75 + [END_OF_TEXT] and not caplog.records
