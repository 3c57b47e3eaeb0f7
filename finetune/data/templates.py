"""Prompt templates and the captions built from them.

A template is a prompt with exactly one ``{}`` where the concept goes, e.g.
``"a photo of a {}"``. Two built-in sets come from the textual-inversion paper
(Gal et al., 2022): `OBJECT_TEMPLATES` for an object ("a photo of a {}") and
`STYLE_TEMPLATES` for an artistic style ("a painting in the style of {}"). Users can
also give a text file with one template per line.

Caption rule (like the ``[filewords]`` of other trainers): for an image
``cat.png`` with no sidecar file, the caption is ``template.format(placeholder)``,
e.g. ``"a photo of a <my-cat>"``. If a sidecar ``cat.txt`` sits next to it, its text
(whitespace collapsed to single spaces) is context placed right after the placeholder:
``template.format(f"{placeholder} {sidecar_text}")``, e.g. with ``cat.txt`` holding
``sleeping on a sofa`` the caption is ``"a photo of a <my-cat> sleeping on a sofa"``.
An empty sidecar counts as no sidecar.
"""

from __future__ import annotations

import os
from pathlib import Path

from finetune.errors import ConfigError, DataError, MissingFileError
from finetune.safefiles import describe_path

# A caption sidecar adds a few words to each caption; anything longer cannot fit in CLIP's 77 tokens anyway.
MAX_SIDECAR_BYTES = 64 * 1024

# The object templates of the textual-inversion paper (imagenet_templates_small).
OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)

# The style templates of the textual-inversion paper (its list repeats two of them;
# each appears once here).
STYLE_TEMPLATES: tuple[str, ...] = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
)

BUILTIN_TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}


def template_problem(template: str) -> str | None:
    """Why `template` is not usable, or None if it is."""
    if not template.strip():
        return "the template is empty"
    count = template.count("{}")
    if count != 1:
        return f'the template has {count} "{{}}", it needs exactly one'
    rest = template.replace("{}", "")
    if "{" in rest or "}" in rest:
        return 'the template has braces other than its one "{}"'
    return None


def load_templates(spec: str | os.PathLike) -> list[str]:
    """Returns the templates named by `spec`.

    `spec` is ``"object"``, ``"style"`` or the path of a UTF-8 text file with one
    template per line; blank lines and lines starting with ``#`` are skipped, and
    every other line must contain exactly one ``{}``.

    Raises:
      MissingFileError: `spec` is not a built-in name and no such file exists.
      ConfigError: the file has a bad template (the message gives file and line) or
        no template at all.
    """
    name = os.fspath(spec)
    if name.strip().lower() in BUILTIN_TEMPLATES:
        return list(BUILTIN_TEMPLATES[name.strip().lower()])
    path = Path(name).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f'templates "{name}" is neither "object", "style" nor an existing file: '
            "use one of the built-in sets or give the path of a text file with one template per line"
        )
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"template file {path} is not UTF-8 text ({e}): save it as UTF-8") from e
    templates = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        problem = template_problem(line)
        if problem:
            raise ConfigError(
                f'template file {path}, line {number}: {problem} (got "{line}"); '
                'write it like "a photo of a {}"'
            )
        templates.append(line)
    if not templates:
        raise ConfigError(
            f'template file {path} has no template: add lines like "a photo of a {{}}"'
        )
    return templates


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """The caption sidecar of an image: ``cat.png`` -> ``cat.txt``."""
    return Path(image_path).with_suffix(".txt")


def read_sidecar(image_path: str | os.PathLike) -> str | None:
    """The context text of an image's sidecar file, or None if there is none (or it is empty)."""
    path = sidecar_path(image_path)
    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
        if len(raw) > MAX_SIDECAR_BYTES:
            raise DataError(
                f"caption file {describe_path(path)} is more than {MAX_SIDECAR_BYTES} bytes; a caption sidecar holds "
                "a few words, and a caption must fit in the model's 77 tokens (token.truncate_long_prompts=true "
                "cuts longer ones)"
            )
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"caption file {describe_path(path)} is not UTF-8 text ({e}): save it as UTF-8") from e
    except OSError as e:
        raise DataError(f"cannot read caption file {describe_path(path)}: {e.strerror or e}") from None
    text = " ".join(text.split())
    return text or None


def with_context(templates: list[str], context: str | None) -> list[str]:
    """Every template with `context` (words naming what every image shows besides the concept: "on a
    white background") right after the placeholder, as a sidecar does for one image: "a photo of a {}"
    -> "a photo of a {} on a white background". The words take the context, so the token need not."""
    if context is None or not context.strip():
        return list(templates)
    context = " ".join(context.split())
    if "{" in context or "}" in context:
        raise ConfigError(f"data.context={context!r} must not contain braces: write the words that every image "
                          "shows besides the concept, e.g. 'on a white background'")
    return [t.replace("{}", "{} " + context, 1) for t in templates]


def make_caption(template: str, placeholder: str, context: str | None = None) -> str:
    """The caption of one (template, image) pair; see the module docstring for the rule."""
    subject = f"{placeholder} {context}" if context else placeholder
    return template.format(subject)
