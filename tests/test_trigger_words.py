"""Safe trigger words: the default placeholder and every exported file stem are not CLIP words, and
`finetune.evaluate` reads the run's placeholder back from every format the project exports."""

import json

import numpy as np
import pytest

from finetune.errors import ConfigError
from finetune.export.formats import (
    FORMATS, MODELSPEC, check_formats, export_embedding, load_any, modelspec_metadata, torch_available,
    trigger_placeholder,
)
from finetune.tokens.tokenizer import concept_placeholder, vocabulary_id
from tests.conftest import CONCEPT, PLACEHOLDER, compose_train

STEM_FORMATS = [f for f, fmt in FORMATS.items() if fmt.trigger_is_stem and (not fmt.needs_torch or torch_available())]


def test_vocabulary_words():
    assert vocabulary_id("concept") == 6353 and vocabulary_id("cat") == 2368  # the example: "concept"
    assert vocabulary_id("red-checkered-heart") is None and vocabulary_id("<concept>") is None
    assert vocabulary_id("my-cat") is None


@pytest.mark.parametrize("folder, placeholder", [
    ("/data/red-checkered-heart", "<red-checkered-heart>"), ("photos/cat", "<my-cat>"), ("photos/cat/", "<my-cat>"),
    ("x/Cat", "<my-Cat>"), ("x/cat toy", "<cattoy>"), ("x/<>", "<my-concept>"), (None, None),
])
def test_default_placeholder_comes_from_the_concept_folder(folder, placeholder):
    assert concept_placeholder(folder) == placeholder
    if placeholder:
        assert vocabulary_id(placeholder) is None and vocabulary_id(placeholder.strip("<>")) is None


def test_default_config_placeholder_and_its_stems_are_not_words(tmp_path):
    cfg = compose_train()
    assert cfg.token.placeholder == PLACEHOLDER == f"<{CONCEPT.name}>"
    cat = tmp_path / "cat"
    assert compose_train(f"data.concept_dir={cat}").token.placeholder == "<my-cat>"
    assert compose_train(f"data.concept_dir={cat}", "token.placeholder='<tok-1>'").token.placeholder == "<tok-1>"
    vectors = np.ones((1, 8), np.float32)
    written = export_embedding(tmp_path / "out", cfg.token.placeholder, vectors, {"placeholder": PLACEHOLDER},
                               ["diffusers", *STEM_FORMATS])
    for fmt in STEM_FORMATS:
        assert written[fmt].stem == "red-checkered-heart" and vocabulary_id(written[fmt].stem) is None


@pytest.mark.parametrize("fmt", ["a1111_safetensors", "kohya", "a1111_pt"])
def test_a_stem_that_is_a_word_is_refused(tmp_path, fmt):
    """`<cat>` is a fine placeholder (three tokens), but its file stem `cat` is a CLIP word."""
    with pytest.raises(ConfigError, match=r"'cat' is a word of the CLIP vocabulary \(id 2368\)") as info:
        FORMATS[fmt].save(tmp_path, "<cat>", np.ones((1, 8), np.float32))
    assert "\n" not in str(info.value) and "<my-cat>" in str(info.value)
    with pytest.raises(ConfigError, match="'concept' is a word"):  # an explicit file name too
        FORMATS[fmt].save(tmp_path / f"concept{FORMATS[fmt].suffix}", "<x-y>", np.ones((1, 8), np.float32))
    assert not list(tmp_path.iterdir())
    if fmt != "a1111_pt" or torch_available():
        with pytest.raises(ConfigError, match="export.formats"):
            check_formats(["diffusers", fmt], "<cat>")
    assert check_formats(["diffusers"], "<cat>") == ["diffusers"]  # diffusers: the token is the tensor name


def test_a_run_with_a_word_stem_is_refused_before_any_work(tmp_path):
    from finetune.training.run import train

    cfg = compose_train("model=tiny_random", "token.placeholder='<cat>'", "export.formats=[diffusers,kohya]")
    with pytest.raises(ConfigError, match="'cat' is a word"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_trigger_placeholder_of_every_exported_format(tmp_path):
    vectors = np.arange(16, dtype=np.float32).reshape(2, 8)
    written = export_embedding(tmp_path, PLACEHOLDER, vectors, {"placeholder": PLACEHOLDER, "steps": "3"},
                               ["diffusers", *STEM_FORMATS])
    for fmt, path in written.items():
        embedding = load_any(path, allow_pickle=True)
        assert embedding.format == fmt and trigger_placeholder(embedding) == PLACEHOLDER, fmt
    # Files of other tools: the tensor name or the file stem, in <...> when that is a CLIP word.
    other = FORMATS["kohya"].save(tmp_path / "my-style.safetensors", "x", vectors, {})
    assert trigger_placeholder(load_any(other)) == "my-style"
    word = FORMATS["kohya"].save(tmp_path / "w-x.safetensors", "x", vectors, {})
    word.rename(tmp_path / "concept.safetensors")  # as another tool might name it
    assert trigger_placeholder(load_any(tmp_path / "concept.safetensors")) == "<concept>"
    bad_meta = FORMATS["diffusers"].save(tmp_path / "d", "<tok>", vectors, {"placeholder": "two words"})
    assert trigger_placeholder(load_any(bad_meta)) == "<tok>"


def test_kohya_modelspec_metadata(tmp_path):
    path = FORMATS["kohya"].save(tmp_path, PLACEHOLDER, np.ones((2, 8), np.float32),
                                 {"placeholder": PLACEHOLDER, "resolution": "64"})
    meta = load_any(path).metadata
    assert {k: meta[k] for k in MODELSPEC} == {
        "modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": "stable-diffusion-v1/textual-inversion",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.prediction_type": "epsilon"}
    assert meta["modelspec.title"] == "red-checkered-heart" and meta["modelspec.resolution"] == "64x64"
    assert len(meta["modelspec.date"]) == 19 and meta["modelspec.date"][10] == "T"  # ISO 8601, whole seconds
    assert modelspec_metadata("t", None, timestamp=0)["modelspec.resolution"] == "512x512"


def test_evaluate_uses_the_placeholder_of_the_projects_own_kohya_export(tmp_path):
    """The issue's case: a kohya file named after a CLIP word used to be refused; the project's own
    export names the placeholder in its metadata, and evaluate takes it from there."""
    from finetune.config import compose_config
    from finetune.evaluation.stage import evaluate_embedding
    from finetune.models.presets import get_preset

    width = get_preset("tiny").text_encoder.width
    vectors = np.random.default_rng(0).standard_normal((2, width)).astype(np.float32)
    path = FORMATS["kohya"].save(tmp_path, PLACEHOLDER, vectors, {"placeholder": PLACEHOLDER})
    (tmp_path / "concept.safetensors").write_bytes(path.read_bytes())  # a stem that is a CLIP word
    for file in (tmp_path / "concept.safetensors",):
        cfg = compose_config("evaluate", [f"embedding={file}", "model=tiny_random", "eval.num_steps=1",
                                          "eval.images_per_prompt=1", "eval.prompts=[\"a photo of {}\"]"])
        out = tmp_path / f"eval-{file.stem}"
        evaluate_embedding(cfg, out)
        metrics = json.loads((out / "metrics.json").read_text())
        assert (metrics["placeholder"], metrics["embedding_format"], metrics["num_vectors"]) == (PLACEHOLDER, "kohya", 2)
