"""Tests of finetune.data: image loading, templates, the TFDS builder, the pipeline."""

from __future__ import annotations

import collections
import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from finetune.data import builder as builder_lib  # noqa: E402
from finetune.data.builder import ConceptImagesConfig, prepare_concept  # noqa: E402
from finetune.data.images import find_images, load_image  # noqa: E402
from finetune.data.pipeline import CAPTION, VARIANT, ConceptExamples, load_concept, training_dataset  # noqa: E402
from finetune.data.templates import (  # noqa: E402
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    load_templates,
    make_caption,
    read_sidecar,
)
from finetune.errors import ConfigError, DataError, FinetuneError, MissingFileError  # noqa: E402

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def solid(w: int, h: int, color) -> Image.Image:
    return Image.new("RGB", (w, h), color)


def make_concept(folder, sizes=((64, 48), (40, 40), (30, 20)), sidecars=None):
    """Images 'img0.png'... of distinct colours; sidecars: {index: text}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    for i, text in (sidecars or {}).items():
        (folder / f"img{i}.txt").write_text(text)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


# ---------------------------------------------------------------- images


def test_find_images_sorted_and_filtered(tmp_path):
    solid(4, 4, RED).save(tmp_path / "b.PNG")
    solid(4, 4, RED).save(tmp_path / "a.jpg")
    solid(4, 4, RED).save(tmp_path / "c.webp")
    solid(4, 4, RED).save(tmp_path / "d.JPEG", format="JPEG")
    solid(4, 4, RED).save(tmp_path / ".hidden.png")
    (tmp_path / "a.txt").write_text("context")
    (tmp_path / "notes.md").write_text("notes")
    (tmp_path / "sub").mkdir()
    solid(4, 4, RED).save(tmp_path / "sub" / "e.png")
    assert [p.name for p in find_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp", "d.JPEG"]


def test_exif_rotated_jpeg_is_rotated(tmp_path):
    # Stored 40 wide x 20 high: left half red, right half blue. Orientation 6 means
    # "rotate 90 degrees clockwise to display": the left half ends up on top.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = RED
    pixels[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "rot.jpg")
    assert image.shape == (40, 20, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image[5, 10], RED, atol=30)
    np.testing.assert_allclose(image[35, 10], BLUE, atol=30)


def test_rgba_transparent_pixels_become_white(tmp_path):
    pixels = np.zeros((10, 10, 4), np.uint8)
    pixels[:, :5] = (255, 0, 0, 255)  # opaque red
    pixels[:, 5:] = (0, 0, 255, 0)  # fully transparent blue
    pixels[0, 9] = (0, 0, 0, 128)  # half-transparent black
    Image.fromarray(pixels, "RGBA").save(tmp_path / "alpha.png")
    image = load_image(tmp_path / "alpha.png")
    assert image.shape == (10, 10, 3)
    assert (image[:, :5] == RED).all()
    assert (image[1:, 5:] == WHITE).all()
    np.testing.assert_allclose(image[0, 9], (127, 127, 127), atol=1)


def test_la_image_composited_on_white(tmp_path):
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png") == 255).all()


def test_16bit_grayscale_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 128 * 257]], np.uint16)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    image = load_image(tmp_path / "gray16.png")
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    np.testing.assert_array_equal(image[0, :, 0], [0, 100, 255, 128])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_grayscale_palette_and_cmyk(tmp_path):
    Image.new("L", (3, 3), 77).save(tmp_path / "gray.png")
    assert (load_image(tmp_path / "gray.png") == 77).all()

    palette = Image.new("P", (4, 2))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    palette.save(tmp_path / "palette.png")
    image = load_image(tmp_path / "palette.png")
    assert tuple(image[0, 0]) == RED and tuple(image[0, 1]) == GREEN and tuple(image[1, 3]) == RED

    palette.save(tmp_path / "palette_t.png", transparency=1)  # colour 1 (green) transparent
    image = load_image(tmp_path / "palette_t.png")
    assert tuple(image[0, 0]) == RED and tuple(image[0, 1]) == WHITE

    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    image = load_image(tmp_path / "cmyk.jpg")
    assert image.shape == (4, 4, 3)
    np.testing.assert_allclose(image, 255, atol=3)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(MissingFileError, match="nope"):
        find_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image"):
        find_images(tmp_path / "empty")
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("hi")
    with pytest.raises(DataError, match="only_text"):
        find_images(tmp_path / "only_text")


def test_too_many_images(tmp_path):
    for i in range(51):
        (tmp_path / f"{i:02d}.png").write_bytes(b"")
    with pytest.raises(DataError, match="51 images"):
        find_images(tmp_path)


def test_corrupt_and_truncated_files_are_named(tmp_path):
    solid(8, 8, RED).save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        find_images(tmp_path)

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    # One clear line, and it is a FinetuneError the entry points catch.
    with pytest.raises(FinetuneError) as info:
        load_image(tmp_path / "cut.png")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- templates


def test_builtin_templates():
    assert len(OBJECT_TEMPLATES) == 27 and len(STYLE_TEMPLATES) == 17
    for template in OBJECT_TEMPLATES + STYLE_TEMPLATES:
        assert template.count("{}") == 1
    assert len(set(OBJECT_TEMPLATES)) == len(OBJECT_TEMPLATES)
    assert len(set(STYLE_TEMPLATES)) == len(STYLE_TEMPLATES)
    assert load_templates("object")[0] == "a photo of a {}"
    assert load_templates("style")[0] == "a painting in the style of {}"


def test_template_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# my templates\n\na photo of {}\n  a drawing of {}  \n")
    assert load_templates(str(path)) == ["a photo of {}", "a drawing of {}"]

    path.write_text("a photo of {}\n\na photo of nothing\n")
    with pytest.raises(ConfigError, match=r"t\.txt, line 3"):
        load_templates(path)
    path.write_text("{} and {}\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_templates(path)
    path.write_text("# only a comment\n")
    with pytest.raises(ConfigError, match="no template"):
        load_templates(path)
    with pytest.raises(MissingFileError, match="missing.txt"):
        load_templates(tmp_path / "missing.txt")


def test_caption_rule(tmp_path):
    assert make_caption("a photo of a {}", "<cat>") == "a photo of a <cat>"
    assert make_caption("a photo of a {}", "<cat>", "on a sofa") == "a photo of a <cat> on a sofa"
    solid(4, 4, RED).save(tmp_path / "x.png")
    assert read_sidecar(tmp_path / "x.png") is None
    (tmp_path / "x.txt").write_text("  sleeping\n on   a sofa \n")
    assert read_sidecar(tmp_path / "x.png") == "sleeping on a sofa"
    (tmp_path / "x.txt").write_text("  \n")
    assert read_sidecar(tmp_path / "x.png") is None


# ---------------------------------------------------------------- builder


def test_builder_yields_images_x_templates_x_repeats(tmp_path, data_dir):
    concept = make_concept(tmp_path / "cat", sidecars={1: "on a sofa"})
    templates = ["a photo of a {}", "a {} drawing", "the {}"]
    builder = prepare_concept(concept, "<cat>", templates, data_dir=data_dir, repeats=2)
    assert builder.data_path.parent.parent == data_dir / "concept_images"
    assert (builder.data_path / "dataset_info.json").is_file()
    assert not list(builder.data_path.parent.glob("incomplete*"))  # atomic: no leftovers

    examples = list(builder.as_dataset(split="train", shuffle_files=False).as_numpy_iterator())
    assert len(examples) == 3 * 3 * 2
    count = collections.Counter((int(e["image_id"]), e["file_name"].decode(), e["caption"].decode()) for e in examples)
    expected = {}
    for i in range(3):
        context = " on a sofa" if i == 1 else ""
        for t in templates:
            expected[(i, f"img{i}.png", t.format(f"<cat>{context}"))] = 2
    assert count == expected
    assert ("a <cat> on a sofa drawing") in {e["caption"].decode() for e in examples}
    for e in examples:
        source = load_image(concept / e["file_name"].decode())
        np.testing.assert_array_equal(e["image"], source)


def test_builder_is_offline_and_reused(tmp_path, data_dir, monkeypatch):
    from tensorflow_datasets.core.download import download_manager
    from tensorflow_datasets.core.utils import gcs_utils

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(gcs_utils, "is_dataset_on_gcs", no_network)
    monkeypatch.setattr(gcs_utils, "gcs_dataset_info_files", no_network)
    monkeypatch.setattr(download_manager.DownloadManager, "download", no_network)
    monkeypatch.setattr(download_manager.DownloadManager, "download_and_extract", no_network)
    assert builder_lib.download_config().try_download_gcs is False

    concept = make_concept(tmp_path / "dog", sizes=((16, 16),))
    first = prepare_concept(concept, "<dog>", ["a {}"], data_dir=data_dir)
    info_mtime = os.stat(first.data_path / "dataset_info.json").st_mtime_ns
    again = prepare_concept(concept, "<dog>", ["a {}"], data_dir=data_dir)
    assert again.data_path == first.data_path
    assert os.stat(again.data_path / "dataset_info.json").st_mtime_ns == info_mtime  # reused, not rebuilt


def test_config_name_tracks_content(tmp_path):
    concept = make_concept(tmp_path / "c", sizes=((8, 8), (8, 8)))

    def name(**kw):
        args = dict(placeholder="<c>", templates=["a {}"], repeats=1, max_short_side=None) | kw
        return ConceptImagesConfig.for_concept(concept, **args).name

    base = name()
    assert base.startswith("c-") and base == name()
    assert len({base, name(placeholder="<d>"), name(templates=["the {}"]), name(repeats=2), name(max_short_side=4)}) == 5
    (concept / "img0.txt").write_text("context")
    with_sidecar = name()
    assert with_sidecar != base
    solid(8, 8, RED).save(concept / "img2.png")
    assert name() not in (base, with_sidecar)
    os.utime(concept / "img2.png", ns=(1, 1))
    assert name() not in (base, with_sidecar)


def test_builder_bad_input(tmp_path, data_dir):
    concept = make_concept(tmp_path / "bad", sizes=((8, 8),))
    (concept / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="broken.png"):
        prepare_concept(concept, "<b>", ["a {}"], data_dir=data_dir)
    assert not list((data_dir / "concept_images").glob("bad-*/*/dataset_info.json"))
    with pytest.raises(MissingFileError):
        prepare_concept(tmp_path / "absent", "<b>", ["a {}"], data_dir=data_dir)
    with pytest.raises(ConfigError, match="templates"):
        prepare_concept(make_concept(tmp_path / "ok", sizes=((8, 8),)), "<b>", ["no slot"], data_dir=data_dir)


# ---------------------------------------------------------------- pipeline


def test_load_concept_center(tmp_path, data_dir, caplog):
    concept = tmp_path / "center"
    concept.mkdir()
    wide = np.zeros((48, 64, 3), np.uint8)
    wide[:] = GREEN
    wide[:, :8] = RED  # outside the centered 48x48 square: must be cropped away
    Image.fromarray(wide).save(concept / "a.png")
    solid(40, 40, BLUE).save(concept / "b.png")
    solid(20, 30, WHITE).save(concept / "small.png")  # 20 wide: upscaled to 32

    with caplog.at_level(logging.WARNING, logger="finetune.data.pipeline"):
        examples = load_concept(concept, "<c>", ["a {}", "the {}"], 32, crop="center", data_dir=data_dir)
    assert any("small.png" in r.getMessage() and "upscaled" in r.getMessage() for r in caplog.records)
    assert not any("a.png" in r.getMessage() for r in caplog.records)

    assert examples.files == ["a.png", "b.png", "small.png"]
    assert examples.images.shape == (6, 32, 32, 3) and examples.images.dtype == np.float32
    assert examples.images.min() >= -1.0 and examples.images.max() <= 1.0
    np.testing.assert_array_equal(examples.variant_source, [0, 0, 1, 1, 2, 2])
    assert examples.captions == ["a <c>", "the <c>"]
    assert examples.pairs.dtype == np.int32 and examples.pairs.shape == (6, 2)
    assert sorted(map(tuple, examples.pairs.tolist())) == [(i, c) for i in range(3) for c in range(2)]
    # Centered crop: no red left, green everywhere; colours map to [-1, 1].
    np.testing.assert_allclose(examples.images[0], np.broadcast_to([-1.0, 1.0, -1.0], (32, 32, 3)), atol=0.02)
    np.testing.assert_allclose(examples.images[2], np.broadcast_to([-1.0, -1.0, 1.0], (32, 32, 3)), atol=0.02)
    np.testing.assert_allclose(examples.images[4], 1.0, atol=0.02)
    for v in range(0, 6, 2):  # every odd variant is the mirror of the one before it
        np.testing.assert_array_equal(examples.images[v + 1], np.flip(examples.images[v], axis=1))

    no_flip = load_concept(concept, "<c>", ["a {}", "the {}"], 32, crop="center", flip=False, data_dir=data_dir)
    assert no_flip.images.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(no_flip.images, examples.images[::2])


def test_load_concept_random_resized(tmp_path, data_dir):
    concept = make_concept(tmp_path / "rr", sizes=((64, 48), (48, 64)), sidecars={0: "red", 1: "blue"})
    args = dict(placeholder="<r>", templates=["a {}", "b {}", "c {}"], resolution=16, crop="random_resized",
                crops_per_image=3, repeats=2, data_dir=data_dir)
    examples = load_concept(concept, seed=1, **args)
    assert examples.images.shape == (2 * 3 * 2, 16, 16, 3)
    assert examples.images.min() >= -1.0 and examples.images.max() <= 1.0
    np.testing.assert_array_equal(examples.variant_source, [0] * 6 + [1] * 6)
    assert examples.pairs.shape == (2 * 3 * 2, 2)
    assert len(examples.captions) == 6 and "a <r> red" in examples.captions
    for v in range(0, 12, 2):
        np.testing.assert_array_equal(examples.images[v + 1], np.flip(examples.images[v], axis=1))
    crops = examples.images[0:6:2]
    assert not np.array_equal(crops[0], crops[1]) and not np.array_equal(crops[1], crops[2])

    again = load_concept(concept, seed=1, **args)
    np.testing.assert_array_equal(again.images, examples.images)
    other = load_concept(concept, seed=2, **args)
    assert not np.array_equal(other.images, examples.images)
    no_flip = load_concept(concept, seed=1, flip=False, **args)
    assert no_flip.images.shape == (2 * 3, 16, 16, 3)
    with pytest.raises(ConfigError, match="crop"):
        load_concept(concept, seed=1, **(args | {"crop": "zoom"}))


def synthetic_examples(variants_per_source=(2, 3, 1), captions_per_source=3, repeats=2) -> ConceptExamples:
    """Each source has its own captions, so a caption index tells its source image."""
    variant_source = np.repeat(np.arange(len(variants_per_source)), variants_per_source).astype(np.int32)
    captions = [f"caption {s} {c}" for s in range(len(variants_per_source)) for c in range(captions_per_source)]
    pairs = [(s, s * captions_per_source + c) for _ in range(repeats)
             for s in range(len(variants_per_source)) for c in range(captions_per_source)]
    return ConceptExamples(
        images=np.zeros((len(variant_source), 4, 4, 3), np.float32),
        variant_source=variant_source,
        captions=captions,
        pairs=np.array(pairs, np.int32),
        files=[f"{s}.png" for s in range(len(variants_per_source))],
    )


def batches(examples, batch_size, seed, n=20):
    return list(training_dataset(examples, batch_size, seed).take(n).as_numpy_iterator())


def test_training_dataset_deterministic_and_consistent():
    examples = synthetic_examples()
    caption_source = np.array([int(c.split()[1]) for c in examples.captions])
    first = batches(examples, 6, seed=7)
    second = batches(examples, 6, seed=7)
    other = batches(examples, 6, seed=8)
    assert len(first) == 20
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    seen_variants = set()
    for batch in first:
        assert batch.shape == (6, 2) and batch.dtype == np.int32
        np.testing.assert_array_equal(examples.variant_source[batch[:, VARIANT]], caption_source[batch[:, CAPTION]])
        seen_variants.update(batch[:, VARIANT].tolist())
    assert seen_variants == set(range(len(examples.variant_source)))  # every variant gets picked


def test_training_dataset_epochs_are_permutations():
    examples = synthetic_examples()  # 18 pairs
    expected = sorted(examples.pairs[:, 1].tolist())
    stream = batches(examples, 6, seed=3, n=9)  # three epochs
    epochs = [np.concatenate([b[:, CAPTION] for b in stream[i : i + 3]]) for i in range(0, 9, 3)]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == expected
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    odd = batches(examples, 7, seed=3, n=5)  # batches run across epoch boundaries
    assert all(b.shape == (7, 2) for b in odd)


def test_training_dataset_from_load_concept(tmp_path, data_dir):
    concept = make_concept(tmp_path / "e2e", sizes=((24, 24), (24, 24)), sidecars={0: "first", 1: "second"})
    examples = load_concept(concept, "<e>", ["a {}", "b {}"], 8, crop="random_resized", crops_per_image=2,
                            repeats=3, data_dir=data_dir)
    caption_source = np.array([0 if c.endswith("first") else 1 for c in examples.captions])
    for batch in batches(examples, 4, seed=0, n=10):
        np.testing.assert_array_equal(examples.variant_source[batch[:, VARIANT]], caption_source[batch[:, CAPTION]])
    with pytest.raises(ConfigError, match="batch_size"):
        training_dataset(examples, 0, seed=0)


def test_builder_stores_downscaled_images(tmp_path, data_dir):
    concept = tmp_path / "large"
    concept.mkdir()
    solid(100, 60, BLUE).save(concept / "wide.png")
    solid(30, 20, RED).save(concept / "small.png")  # already small: kept as is
    builder = prepare_concept(concept, "<l>", ["a {}"], data_dir=data_dir, max_short_side=32)
    shapes = {e["file_name"].decode(): e["image"].shape
              for e in builder.as_dataset(split="train").as_numpy_iterator()}
    assert shapes == {"wide.png": (32, 53, 3), "small.png": (20, 30, 3)}
    assert builder_lib.shrink(np.zeros((90, 40, 3), np.uint8), 20).shape == (45, 20, 3)
