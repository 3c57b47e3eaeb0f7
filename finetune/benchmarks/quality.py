"""The learning-quality benchmark of a toy-world concept (the textual-inversion paper's protocol).

One table, four rows, each rendered from the same fixed seeds:

    random token       the placeholder with a random vector (norm of an average token)
    initializer token  the placeholder with token.initializer's vector: the run before training
    learned token      the placeholder with the vector the run learned
    oracle prompt      no placeholder: the concept's nameable attributes written out in words

Columns: on `CONCEPT_PROMPT` ("a photo of {}"): CLIP-I (against the concept's images), the
attribute score (every attribute of the concept right), each attribute's accuracy and the
never-named attribute's rate; on the `EDIT_PROMPTS` (the concept in a new context): CLIP-T
(the prompt without the placeholder against the image) and the edit score (the edited
attribute as asked); and the training wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.evaluation.scores import measure_images, read_concept, score_images
from finetune.sampling import SamplerSettings
from finetune.sampling.renderer import PromptRenderer, expand_prompt

CONCEPT_PROMPT = "a photo of {}"
# An edited context and the attribute value the edit asks for.
EDIT_PROMPTS = {"{} on a green background": ("background", "green"), "a small {}": ("size", "small")}
ROWS = ("random token", "initializer token", "learned token", "oracle prompt")


@dataclass
class QualityRow:
    name: str
    clip_i: float
    clip_t: float
    attribute_score: float
    edit_score: float
    attributes: dict[str, float]
    never_named: float
    train_seconds: float | None = None
    prompts: list[str] = field(default_factory=list)


def oracle_prompts(target: dict, never_named: list[str]) -> tuple[str, list[str]]:
    """The oracle's concept prompt and edit prompts: the nameable attributes (and each edit) written out."""
    from finetune.toyworld import describe

    named = {k: v for k, v in target.items() if k not in never_named}
    return (expand_prompt(CONCEPT_PROMPT, describe(named)),
            [describe({**named, attribute: value}) for attribute, value in EDIT_PROMPTS.values()])


def quality_row(
    name: str, renderer: PromptRenderer, judge, reference: np.ndarray, target: dict, never_named: list[str],
    concept_prompt: str, edit_prompts: list[str], samples: int, settings: SamplerSettings, placeholder: str,
) -> QualityRow:
    """Score `samples` images of `concept_prompt` and `samples` of the `edit_prompts` (in EDIT_PROMPTS order)."""
    concept = renderer.render([concept_prompt], settings, samples, progress=False)
    images = np.stack([r.image for r in concept])
    main = score_images(images, [concept_prompt] * len(images), placeholder, judge=judge, reference=reference, target=target)
    measured = measure_images(images)

    per_edit = max(1, samples // len(EDIT_PROMPTS))
    edited = renderer.render(edit_prompts, settings, per_edit, progress=False)
    edit_images = np.stack([r.image for r in edited])
    # CLIP-T compares each image with its edit prompt without the placeholder ("on a green background").
    clip_t_texts = [expand_prompt(p, "").strip() for p in EDIT_PROMPTS for _ in range(per_edit)]
    edit_scores = score_images(edit_images, [r.prompt for r in edited], placeholder, judge=judge, clip_t_texts=clip_t_texts)
    wanted = [v for v in EDIT_PROMPTS.values() for _ in range(per_edit)]
    edit_ok = [m.get(attribute) == value for m, (attribute, value) in zip(measure_images(edit_images), wanted)]
    return QualityRow(
        name=name, clip_i=main["clip_i"], clip_t=edit_scores["clip_t"], attribute_score=main["attribute_score"],
        edit_score=float(np.mean(edit_ok)), attributes=main["attributes"],
        never_named=float(np.mean([all(m.get(a) == target[a] for a in never_named) for m in measured])),
        prompts=[concept_prompt, *edit_prompts],
    )


def run_quality(cfg, run_dir: str | Path, samples: int = 32, seed: int = 1000, progress: bool = True) -> list[QualityRow]:
    """Train `cfg` (a TrainConfig on a toy-world concept) into `run_dir`, then score the four rows."""
    from finetune.assembly import build_pipeline, resolve_model
    from finetune.errors import ConfigError
    from finetune.evaluation.judge import load_judge
    from finetune.evaluation.stage import reference_images
    from finetune.export.diffusers_format import DEFAULT_FILENAME, load_diffusers_embedding
    from finetune.training.run import train

    meta = read_concept(cfg.data.concept_dir) or {}
    target = meta.get("toyworld_attributes")
    if target is None:
        raise ConfigError(f"data.concept_dir={cfg.data.concept_dir}: no concept.json with toyworld_attributes; "
                          "the quality benchmark needs a toy-world concept (scripts/make_concept.py)")
    source = resolve_model(cfg.model)
    judge = load_judge(cfg.model.judge, source.preset)
    if judge is None:
        raise ConfigError(f"model={cfg.model.preset}: model.judge is not set; the quality benchmark needs a CLIP judge")

    started = time.perf_counter()
    metrics = train(cfg, run_dir)
    train_seconds = metrics.get("train_seconds", time.perf_counter() - started)
    _, learned, _ = load_diffusers_embedding(Path(run_dir) / DEFAULT_FILENAME)

    placeholder = cfg.token.placeholder
    pipeline = build_pipeline(source, placeholder, cfg.token.num_vectors, cfg.data.resolution,
                              truncate_long_prompts=cfg.token.truncate_long_prompts)
    vectors = {
        "random token": pipeline.initial_vectors(None, seed),
        "initializer token": pipeline.initial_vectors(cfg.token.initializer, cfg.seed),
        "learned token": learned,
    }
    renderer = pipeline.renderer
    settings = SamplerSettings(num_steps=cfg.eval.num_steps, guidance_scale=cfg.eval.guidance_scale, eta=0.0, seed=seed)
    reference = reference_images(cfg.data.concept_dir, cfg.data.resolution)
    common = dict(renderer=renderer, judge=judge, reference=reference, target=target, never_named=meta.get("never_named", []),
                  samples=samples, settings=settings, placeholder=placeholder)
    token_prompts = (expand_prompt(CONCEPT_PROMPT, placeholder), [expand_prompt(p, placeholder) for p in EDIT_PROMPTS])
    rows = []
    for name in ROWS:
        if name in vectors:
            pipeline.set_vectors(vectors[name])
            concept_prompt, edit_prompts = token_prompts
        else:  # the oracle: the concept's nameable attributes in words
            concept_prompt, edit_prompts = oracle_prompts(target, common["never_named"])
        row = quality_row(name, concept_prompt=concept_prompt, edit_prompts=edit_prompts, **common)
        row.train_seconds = round(float(train_seconds), 1) if name == "learned token" else None
        rows.append(row)
        if progress:
            print(f"  {name}: attribute score {row.attribute_score:.3f}, CLIP-I {row.clip_i:.3f}")
    return rows


def format_table(rows: list[QualityRow]) -> str:
    """A Markdown table of the rows."""
    from finetune.toyworld.checker import MEASURED

    attrs = sorted(rows[0].attributes, key=lambda a: MEASURED.index(a) if a in MEASURED else len(MEASURED))
    head = ["row", "CLIP-I", "CLIP-T", "attribute score", "never-named", "edit score", *attrs, "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, f"{r.clip_i:.3f}", f"{r.clip_t:.3f}", f"{r.attribute_score:.3f}", f"{r.never_named:.3f}",
                 f"{r.edit_score:.3f}", *(f"{r.attributes[a]:.2f}" for a in attrs),
                 "-" if r.train_seconds is None else f"{r.train_seconds:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
