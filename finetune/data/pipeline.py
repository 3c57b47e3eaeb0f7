"""From a concept folder to training batches.

`load_concept` prepares the concept's TFDS dataset (`finetune.data.builder`), reads
it back and precomputes every augmented variant of every source image: the trainer
encodes each variant once with the frozen VAE encoder and caches the latents, so
augmentation happens here, once, and not per step.

- ``crop="center"``: one variant per image, the centered square crop resized to
  ``resolution`` (antialiased);
- ``crop="random_resized"``: ``crops_per_image`` variants per image, each a random
  crop covering 50-100 % of the image area with aspect ratio 3/4-4/3, resized to
  ``resolution`` x ``resolution``; seeded, so the same seed gives the same crops;
- ``flip=True`` adds the horizontal mirror of every crop, right after it.

Images whose shorter side is below ``resolution`` are upscaled (with a warning naming
the file).

`training_dataset` then yields, forever, batches of (variant index, caption index), one
int32 [B, 2] tensor per batch (columns ``VARIANT`` and ``CAPTION``; one tensor rather than a
dict, because Keras' fit cannot build from a dict batch under MultiWorkerMirroredStrategy,
keras-team/keras#20329). The (image, caption) pairs are shuffled every epoch and each pair
gets one of its image's variants at random, all with stateless seeded random ops, so a seed
gives the same stream every time.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from finetune.data.builder import SPLIT, prepare_concept
from finetune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

from finetune.data.columns import CAPTION, VARIANT  # noqa: F401  (the columns of a training batch)
CROP_MODES = ("center", "random_resized")
CROP_SCALE = (0.5, 1.0)  # fraction of the image area kept by a random-resized crop
CROP_RATIO = (3 / 4, 4 / 3)  # width / height of a random-resized crop
_RESAMPLE = Image.Resampling.LANCZOS


@dataclass
class ConceptExamples:
    """Everything the trainer needs from a concept folder, precomputed."""

    images: np.ndarray  # float32 [M, R, R, 3] in [-1, 1]: every variant of every source image
    variant_source: np.ndarray  # int32 [M]: source image index of each variant
    captions: list[str]  # unique captions, sorted
    pairs: np.ndarray  # int32 [P, 2]: (source image index, caption index) per example, repeats included
    files: list[str]  # source file names, index = source image index

    @property
    def num_sources(self) -> int:
        return len(self.files)

    @property
    def num_variants(self) -> int:
        return int(self.images.shape[0])


def load_concept(
    concept_dir: str | os.PathLike,
    placeholder: str,
    templates: Sequence[str],
    resolution: int,
    crop: str = "center",
    flip: bool = True,
    crops_per_image: int = 4,
    repeats: int = 1,
    seed: int = 0,
    *,
    data_dir: str | os.PathLike,
) -> ConceptExamples:
    """Prepares the concept dataset under `data_dir` (or reuses it) and builds the variants.

    Raises:
      ConfigError: a bad argument (crop mode, resolution, template, ...).
      MissingFileError / DataError: the folder is missing, empty, too big, or holds a
        corrupt image.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise ConfigError(f"resolution must be a whole number >= 8, got {resolution!r}")
    if crop not in CROP_MODES:
        raise ConfigError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
    if isinstance(crops_per_image, bool) or not isinstance(crops_per_image, int) or crops_per_image < 1:
        raise ConfigError(f"crops_per_image must be a whole number >= 1, got {crops_per_image!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be a whole number, got {seed!r}")

    # The dataset stores images no bigger than needed (a random crop keeps >= 50 %
    # of the area, so a shorter side of twice the resolution is plenty); both crop
    # modes share it.
    max_short_side = 2 * resolution
    builder = prepare_concept(
        concept_dir,
        placeholder,
        list(templates),
        data_dir=data_dir,
        repeats=repeats,
        max_short_side=max_short_side,
    )
    sources, files, example_rows = _read_split(builder)

    captions = sorted({caption for _, caption in example_rows})
    caption_index = {caption: i for i, caption in enumerate(captions)}
    pairs = np.array([(image_id, caption_index[caption]) for image_id, caption in example_rows], np.int32)

    variants, variant_source = [], []
    for image_id, (image, file_name) in enumerate(zip(sources, files)):
        if min(image.shape[:2]) < resolution:
            log.warning(
                "image %s is %dx%d, smaller than the %d-pixel resolution: it is upscaled, expect blur",
                Path(concept_dir) / file_name, image.shape[1], image.shape[0], resolution,
            )
        rng = np.random.default_rng([seed % 2**63, image_id])
        for crop_image in _crops(image, resolution, crop, crops_per_image, rng):
            variants.append(crop_image)
            variant_source.append(image_id)
            if flip:
                variants.append(np.ascontiguousarray(crop_image[:, ::-1]))
                variant_source.append(image_id)

    images = np.stack(variants).astype(np.float32) / 127.5 - 1.0
    return ConceptExamples(
        images=images,
        variant_source=np.asarray(variant_source, np.int32),
        captions=captions,
        pairs=pairs,
        files=files,
    )


def _read_split(builder) -> tuple[list[np.ndarray], list[str], list[tuple[int, str]]]:
    """Reads the prepared split: one decoded image per source, and every (image_id, caption)."""
    dataset = builder.as_dataset(
        split=SPLIT,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},  # decode each source once, below
    )

    # Every example repeats its image's bytes; pass them on only the first time an
    # image_id shows up (a bit mask of seen ids; there are at most 50 images).
    def first_bytes_only(seen, example):
        bit = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.cast(example["image_id"], tf.int64))
        is_new = tf.equal(tf.bitwise.bitwise_and(seen, bit), 0)
        image = tf.where(is_new, example["image"], tf.constant(b""))
        return tf.bitwise.bitwise_or(seen, bit), dict(example, image=image)

    dataset = dataset.scan(tf.constant(0, tf.int64), first_bytes_only)
    encoded: dict[int, tuple[bytes, str]] = {}
    rows = []
    for example in dataset.as_numpy_iterator():
        image_id = int(example["image_id"])
        if example["image"]:
            encoded[image_id] = (example["image"], example["file_name"].decode("utf-8"))
        rows.append((image_id, example["caption"].decode("utf-8")))
    ids = {image_id for image_id, _ in rows}
    if not rows or set(encoded) != ids or sorted(ids) != list(range(len(ids))):
        raise DataError(f"dataset {builder.data_dir} is incomplete: delete that folder and run again")
    sources, files = [], []
    for image_id in range(len(encoded)):
        data, file_name = encoded[image_id]
        with Image.open(io.BytesIO(data)) as img:
            sources.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        files.append(file_name)
    return sources, files, rows


def _crops(image: np.ndarray, resolution: int, crop: str, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """uint8 [R, R, 3] crops of one image (no flip)."""
    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    if crop == "center":
        side = min(h, w)
        boxes = [((w - side) // 2, (h - side) // 2, side, side)]
    else:
        boxes = [_random_resized_box(h, w, rng) for _ in range(count)]
    out = []
    for x, y, bw, bh in boxes:
        if (bw, bh) == (resolution, resolution):
            out.append(np.array(image[y : y + bh, x : x + bw]))
        else:
            # Crop first, so that no pixel outside the box leaks in through the filter.
            resized = pil.crop((x, y, x + bw, y + bh)).resize((resolution, resolution), _RESAMPLE)
            out.append(np.asarray(resized, dtype=np.uint8))
    return out


def _random_resized_box(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(x, y, width, height) covering CROP_SCALE of the area with aspect in CROP_RATIO."""
    area = h * w
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(20):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        bw = int(round(math.sqrt(target * ratio)))
        bh = int(round(math.sqrt(target / ratio)))
        if 0 < bw <= w and 0 < bh <= h:
            x = int(rng.integers(0, w - bw + 1))
            y = int(rng.integers(0, h - bh + 1))
            return x, y, bw, bh
    # Very elongated image: fall back to the largest centered crop with an allowed aspect.
    if w / h > CROP_RATIO[1]:
        bw, bh = int(round(h * CROP_RATIO[1])), h
    elif w / h < CROP_RATIO[0]:
        bw, bh = w, int(round(w / CROP_RATIO[0]))
    else:
        bw, bh = w, h
    return (w - bw) // 2, (h - bh) // 2, bw, bh


def training_dataset(examples: ConceptExamples, batch_size: int, seed: int) -> tf.data.Dataset:
    """An infinite, seeded stream of int32 [B, 2] batches: (variant index, caption index) per row.

    Every epoch is a fresh seeded permutation of ``examples.pairs`` (batches run on
    across epoch boundaries); each pair gets a uniformly random variant of its source
    image. Only stateless random ops are used: the same seed gives the same batches.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be a whole number, got {seed!r}")
    pairs = np.asarray(examples.pairs, np.int32).reshape(-1, 2)
    if len(pairs) == 0:
        raise DataError("the concept has no (image, caption) example to train on")
    variant_source = np.asarray(examples.variant_source, np.int64)
    num_sources = max(int(pairs[:, 0].max()), int(variant_source.max(initial=-1))) + 1
    counts = np.bincount(variant_source, minlength=num_sources)
    missing = sorted(set(pairs[:, 0].tolist()) - set(np.nonzero(counts)[0].tolist()))
    if missing:
        raise DataError(f"source images {missing} have no variant: the examples are inconsistent")
    # Variants of source s are by_source[offsets[s] : offsets[s] + counts[s]].
    by_source = tf.constant(np.argsort(variant_source, kind="stable").astype(np.int32))
    offsets = tf.constant((np.cumsum(counts) - counts).astype(np.int32))
    counts_t = tf.constant(counts.astype(np.int32))
    pair_source = tf.constant(pairs[:, 0])
    pair_caption = tf.constant(pairs[:, 1])
    num_pairs = len(pairs)

    base = tf.constant([seed % 2**63, 0], tf.int64)
    shuffle_key = tf.random.experimental.stateless_fold_in(base, 1)
    pick_key = tf.random.experimental.stateless_fold_in(base, 2)

    def epoch(index):
        key = tf.random.experimental.stateless_fold_in(shuffle_key, index)
        order = tf.random.experimental.stateless_shuffle(tf.range(num_pairs, dtype=tf.int32), seed=key)
        return tf.data.Dataset.from_tensor_slices(order)

    def pick(step, pair_ids):
        source = tf.gather(pair_source, pair_ids)
        count = tf.gather(counts_t, source)
        key = tf.random.experimental.stateless_fold_in(pick_key, step)
        u = tf.random.stateless_uniform([batch_size], seed=key, dtype=tf.float64)
        k = tf.minimum(tf.cast(tf.floor(u * tf.cast(count, tf.float64)), tf.int32), count - 1)
        variant = tf.gather(by_source, tf.gather(offsets, source) + k)
        return tf.stack([variant, tf.gather(pair_caption, pair_ids)], axis=1)  # columns VARIANT, CAPTION

    dataset = tf.data.Dataset.counter(dtype=tf.int64).flat_map(epoch)
    dataset = dataset.batch(batch_size, drop_remainder=True).enumerate().map(pick)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(2)
