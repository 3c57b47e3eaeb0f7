"""A tensorflow-datasets builder for one concept folder.

`prepare_concept` turns a folder of images into a prepared TFDS dataset of
(image, caption) examples: every image paired with every template, `repeats` times.
Nothing is ever downloaded: the source is the local folder, and the GCS look-up of
pre-built datasets is switched off.

On disk (``data_dir`` is an argument):
``<data_dir>/concept_images/<folder-name>-<hash>/1.0.0/`` holds the TFRecord shard(s)
and ``dataset_info.json``. The hash covers the folder's absolute path, its image and
sidecar file names, sizes and modification times, the templates, the placeholder,
`repeats` and `max_short_side`, so a changed folder or setting gives a new dataset
directory (old ones are left in place and can be deleted at any time). TFDS writes
into a temporary ``incomplete.*`` directory next to the final one and renames it when
done, so an interrupted preparation never leaves a half-written dataset behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import contextlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from finetune.data.images import find_images, load_image
from finetune.data.templates import make_caption, read_sidecar, sidecar_path, template_problem
from finetune.errors import ConfigError, DataError, FinetuneError
from finetune.io import fault_point

log = logging.getLogger(__name__)

DATASET_VERSION = "1.0.0"
SPLIT = "train"


@dataclasses.dataclass(eq=False)
class ConceptImagesConfig(tfds.core.BuilderConfig):
    """What a `ConceptImages` dataset is made of. Build it with `for_concept`."""

    concept_dir: str = ""
    placeholder: str = ""
    templates: list[str] = dataclasses.field(default_factory=list)
    repeats: int = 1
    # If the shorter side of an image is longer than this, the image is stored
    # downscaled so that its shorter side equals it (None keeps the full size).
    max_short_side: int | None = None

    @classmethod
    def for_concept(
        cls,
        concept_dir: str | os.PathLike,
        placeholder: str,
        templates: Sequence[str],
        repeats: int = 1,
        max_short_side: int | None = None,
    ) -> "ConceptImagesConfig":
        """A config whose name is unique to the folder's current content and the settings."""
        concept_dir = os.path.abspath(os.path.expanduser(os.fspath(concept_dir)))
        templates = list(templates)
        _validate(placeholder, templates, repeats, max_short_side)
        digest = concept_fingerprint(concept_dir, placeholder, templates, repeats, max_short_side)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(concept_dir).name).strip("-")[:40] or "concept"
        return cls(
            name=f"{slug}-{digest}",
            description=f"Images of {concept_dir} with {len(templates)} templates, x{repeats}",
            concept_dir=concept_dir,
            placeholder=placeholder,
            templates=templates,
            repeats=repeats,
            max_short_side=max_short_side,
        )


def _validate(placeholder: str, templates: list[str], repeats: int, max_short_side: int | None) -> None:
    if not isinstance(placeholder, str) or not placeholder.strip() or placeholder != placeholder.strip():
        raise ConfigError(
            f"placeholder {placeholder!r} must be a non-empty string without surrounding spaces, e.g. '<my-cat>'"
        )
    if not templates:
        raise ConfigError('templates is empty: use "object", "style" or a template file')
    for i, template in enumerate(templates):
        problem = template_problem(template) if isinstance(template, str) else "it is not a string"
        if problem:
            raise ConfigError(f"templates[{i}] {template!r}: {problem}; write it like \"a photo of a {{}}\"")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be a whole number >= 1, got {repeats!r}")
    if max_short_side is not None and (not isinstance(max_short_side, int) or max_short_side < 1):
        raise ConfigError(f"max_short_side must be a whole number >= 1 or None, got {max_short_side!r}")


def _stat(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def concept_fingerprint(
    concept_dir: str | os.PathLike,
    placeholder: str,
    templates: Sequence[str],
    repeats: int,
    max_short_side: int | None,
) -> str:
    """16 hex digits identifying the folder's current files and the dataset settings."""
    concept_dir = os.path.abspath(os.path.expanduser(os.fspath(concept_dir)))
    files = []
    for path in find_images(concept_dir, verify=False):
        sidecar = sidecar_path(path)
        files.append([_stat(path), _stat(sidecar) if sidecar.is_file() else None])
    content = {
        "dataset_version": DATASET_VERSION,
        "concept_dir": concept_dir,
        "files": files,
        "placeholder": placeholder,
        "templates": list(templates),
        "repeats": repeats,
        "max_short_side": max_short_side,
    }
    blob = json.dumps(content, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def shrink(image: np.ndarray, max_short_side: int | None) -> np.ndarray:
    """Downscales (antialiased) so the shorter side is at most `max_short_side`."""
    h, w = image.shape[:2]
    if max_short_side is None or min(h, w) <= max_short_side:
        return image
    if h <= w:
        size = (max(1, round(w * max_short_side / h)), max_short_side)
    else:
        size = (max_short_side, max(1, round(h * max_short_side / w)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    """DatasetInfo that never looks for pre-computed metadata on GCS (local data only)."""

    def initialize_from_bucket(self) -> None:
        pass


class ConceptImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """(image, caption) examples of one concept folder: images x templates x repeats.

    Features: ``image`` (uint8 RGB, variable size, PNG-encoded), ``image_id`` (int32,
    index into the sorted file list), ``file_name`` (the image's file name) and
    ``caption``. One split, ``"train"``, stored in generation order: for each
    repeat, for each image, for each template.
    """

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Images x templates x repeats of a local folder."}

    # TFDS derives the builder's source path (where it looks for a checksums file)
    # through `importlib_resources`, which is not a dependency; give it directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> tfds.core.Path:
        return tfds.core.Path(__file__)

    def __init__(self, *, config: ConceptImagesConfig, data_dir: str | os.PathLike, **kwargs):
        if not isinstance(config, ConceptImagesConfig):
            raise TypeError("ConceptImages needs a ConceptImagesConfig (see ConceptImagesConfig.for_concept)")
        super().__init__(config=config, data_dir=os.fspath(data_dir), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalDatasetInfo(
            builder=self,
            description="Images of a user concept paired with caption templates.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format="png"),
                    "image_id": tfds.features.Scalar(dtype=np.int32),
                    "file_name": tfds.features.Text(),
                    "caption": tfds.features.Text(),
                }
            ),
            # Keep the generation order (repeat, image, template) on disk.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # local data only: nothing to download
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
        config: ConceptImagesConfig = self.builder_config
        digest = concept_fingerprint(
            config.concept_dir, config.placeholder, config.templates, config.repeats, config.max_short_side
        )
        if not config.name.endswith(digest):
            raise DataError(
                f"concept folder {config.concept_dir} changed while its dataset was being prepared: run again"
            )
        files = find_images(config.concept_dir, verify=False)
        sources = []
        for path in files:
            encoded = _png(shrink(load_image(path), config.max_short_side))
            context = read_sidecar(path)
            captions = [make_caption(t, config.placeholder, context) for t in config.templates]
            sources.append((path.name, encoded, captions))
        for repeat in range(config.repeats):
            for image_id, (file_name, encoded, captions) in enumerate(sources):
                for template_id, caption in enumerate(captions):
                    key = f"{repeat:05d}-{image_id:02d}-{template_id:05d}"
                    fault_point(f"dataset:{key}")  # kill-point tests: killed while tfds writes the split
                    yield key, {
                        "image": encoded,
                        "image_id": image_id,
                        "file_name": file_name,
                        "caption": caption,
                    }


def download_config() -> tfds.download.DownloadConfig:
    """The offline preparation settings: never look for a pre-built copy on GCS."""
    return tfds.download.DownloadConfig(
        try_download_gcs=False,
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
    )


class _DropCustomConfigNotice(logging.Filter):
    """TFDS logs a warning with the whole config each time a custom config is used."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using custom data configuration")


@contextlib.contextmanager
def _quiet_custom_config():
    absl_logger = logging.getLogger("absl")
    notice_filter = _DropCustomConfigNotice()
    absl_logger.addFilter(notice_filter)
    try:
        yield
    finally:
        absl_logger.removeFilter(notice_filter)


def make_builder(config: ConceptImagesConfig, data_dir: str | os.PathLike) -> ConceptImages:
    """A `ConceptImages` builder for `config` under `data_dir` (prepared or not)."""
    with _quiet_custom_config():
        return ConceptImages(config=config, data_dir=data_dir)


def _is_prepared(builder: ConceptImages) -> bool:
    return (Path(builder.data_dir) / "dataset_info.json").is_file()


def prepare_concept(
    concept_dir: str | os.PathLike,
    placeholder: str,
    templates: Sequence[str],
    *,
    data_dir: str | os.PathLike,
    repeats: int = 1,
    max_short_side: int | None = None,
) -> ConceptImages:
    """Prepares (or reuses) the dataset of a concept folder and returns its builder.

    Every image is decoded and checked before anything is written, so a corrupt
    image is reported (DataError naming the file) and leaves no dataset behind.
    """
    config = ConceptImagesConfig.for_concept(concept_dir, placeholder, templates, repeats, max_short_side)
    data_dir = Path(data_dir).expanduser()
    builder = make_builder(config, data_dir)
    if _is_prepared(builder):
        return builder
    for path in find_images(concept_dir):  # decodes every image: DataError naming a corrupt file
        read_sidecar(path)  # DataError naming an unreadable caption file
    # tfds print()s two lines about "downloading"; show them only when tfds logs INFO (verbose=true).
    quiet = logging.getLogger("tensorflow_datasets").getEffectiveLevel() > logging.INFO
    log.info("preparing the dataset of %s in %s", concept_dir, builder.data_dir)
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            builder.download_and_prepare(
                download_dir=data_dir / "downloads",
                download_config=download_config(),
            )
    except OSError as e:
        # Another process may have finished the same dataset first (its rename won).
        if not _is_prepared(builder):
            raise FinetuneError(f"cannot prepare the dataset in {data_dir}: {e.strerror or e}; check the disk has room "
                                "and the folder is writable (data.data_dir)") from None
        builder = make_builder(config, data_dir)
    except FinetuneError:
        raise
    except Exception as e:  # tfds/TensorFlow report a full disk as tf.errors.ResourceExhaustedError, or wrap it
        import tensorflow as tf

        text = str(getattr(e, "message", None) or e)
        if not isinstance(e, tf.errors.OpError) and not any(
            s in text for s in ("ResourceExhausted", "No space left", "Permission denied", "Read-only file system")
        ):
            raise
        reason = " ".join(text.split())[:300]
        raise FinetuneError(f"cannot prepare the dataset in {data_dir}: {reason}; check the disk has room "
                            "and the folder is writable (data.data_dir)") from None
    return builder
