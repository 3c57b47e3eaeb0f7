"""Finding and decoding the user's concept images.

A concept folder holds 1 to 50 images (``.jpg``, ``.jpeg``, ``.png``, ``.webp``, any
letter case). Hidden files (``.DS_Store``, ``._photo.jpg``), sub-folders, ``.txt``
caption sidecars and files with other extensions are ignored.

`load_image` always returns 8-bit RGB, whatever the file holds: the EXIF orientation
is applied, transparency is composited on white, grayscale / palette / 16-bit / CMYK
images are converted.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from finetune.errors import DataError, MissingFileError
from finetune.safefiles import describe_path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MAX_IMAGES = 50

# Everything PIL can raise for a file that is not a valid, complete image.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def is_image_file(path: Path) -> bool:
    """True for a visible file whose extension is one of `IMAGE_EXTENSIONS`."""
    return (
        not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
    )


def skipped_entries(folder: Path) -> list[str]:
    """What a concept folder holds besides images, caption sidecars (.txt) and concept.json, each with the
    reason it is skipped: folders named like images, dangling links, link loops, FIFOs, devices, other files."""
    out = []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if p.name.startswith(".") or is_image_file(p):
            continue
        suffix = p.suffix.lower()
        try:
            mode = p.stat().st_mode
        except OSError as e:  # dangling link, link loop, no permission
            reason = "dangling link" if p.is_symlink() and e.errno == errno.ENOENT else (e.strerror or str(e)).lower()
            out.append(f"{describe_path(p.name)} ({reason})")
            continue
        if stat.S_ISDIR(mode):
            if suffix in IMAGE_EXTENSIONS:
                out.append(f"{describe_path(p.name)} (a folder)")
        elif not stat.S_ISREG(mode):
            out.append(f"{describe_path(p.name)} (not a regular file)")
        elif suffix not in IMAGE_EXTENSIONS and suffix not in (".txt", ".json"):
            out.append(f"{describe_path(p.name)} (not {'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)})")
    return out


def find_images(concept_dir: str | os.PathLike, *, verify: bool = True) -> list[Path]:
    """Returns the concept's image files, sorted by file name.

    With ``verify=True`` (the default) every image is decoded once, so a corrupt file
    is reported here, by name, before any work starts.

    Raises:
      MissingFileError: the folder does not exist.
      DataError: the path is not a folder, holds no image or more than 50 images, or an
        image cannot be decoded.
    """
    folder = Path(concept_dir).expanduser()
    if not folder.exists():
        raise MissingFileError(
            f"concept folder {folder} does not exist: create it and put 1-{MAX_IMAGES} "
            f"images ({', '.join(IMAGE_EXTENSIONS)}) of your concept in it"
        )
    if not folder.is_dir():
        raise DataError(f"concept folder {folder} is a file, not a folder: point it at the folder of images")
    files = sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)
    if verify:
        skipped = skipped_entries(folder)
        if skipped:
            log.warning("concept folder %s: skipped %d entr%s that %s not image files: %s", describe_path(folder),
                        len(skipped), "y" if len(skipped) == 1 else "ies", "is" if len(skipped) == 1 else "are",
                        ", ".join(skipped[:20]) + (", ..." if len(skipped) > 20 else ""))
    if not files:
        raise DataError(
            f"concept folder {folder} holds no image: add 1-{MAX_IMAGES} images "
            f"({', '.join(IMAGE_EXTENSIONS)}) of your concept"
        )
    if len(files) > MAX_IMAGES:
        raise DataError(
            f"concept folder {folder} holds {len(files)} images, more than the "
            f"{MAX_IMAGES} allowed: keep at most {MAX_IMAGES} of them"
        )
    if verify:
        for path in files:
            load_image(path)
    return files


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image file to uint8 RGB ``[H, W, 3]``.

    - EXIF orientation is applied (`PIL.ImageOps.exif_transpose`);
    - transparent pixels (RGBA, LA, PA, palette with transparency) are composited
      on white;
    - 16-bit grayscale ("I;16*", "I") is scaled from 0..65535 to 0..255;
    - grayscale, bilevel, palette, CMYK, YCbCr are converted to RGB.

    Raises:
      MissingFileError: the file does not exist.
      DataError: the file is corrupt, truncated or not an image; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"image file {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()  # decodes everything: truncated data fails here, not later
            img = ImageOps.exif_transpose(img)
            return _to_rgb8(img)
    except _DECODE_ERRORS as e:
        raise DataError(
            f"image file {path} cannot be decoded ({type(e).__name__}: {e}): "
            "re-save it as PNG or JPEG, or remove it from the folder"
        ) from e


def _to_rgb8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale (PNG opens as "I;16" or "I"): 65535 -> 255.
        values = np.asarray(img).astype(np.float64)
        gray = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P":
        mode = "RGBA" if "transparency" in img.info else "RGB"
        img = img.convert(mode)
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    elif mode == "RGB" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    array = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(array)
