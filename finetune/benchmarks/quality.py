"""The learning-quality benchmark of a toy-world concept (the textual-inversion paper's protocol).

One table, each row rendered from the same fixed seeds:

    random token       the placeholder with a random vector (norm of an average token)
    initializer token  the placeholder with token.initializer's vector: the run before training
    learned token      the placeholder with the vector the run learned (with `methods`: one row per
                       training method, e.g. each editability option: the fidelity-editability table)
    oracle prompt      no placeholder: the concept's nameable attributes written out in words

Columns: on `CONCEPT_PROMPT` ("a photo of {}"): CLIP-I (against the concept's images), the
attribute score (every attribute of the concept right), each attribute's accuracy and the
never-named attribute's rate. On the edit prompts (`context_edits`: every other value of the
background, size and position, "{} on a blue background", "a small {}", "{} on the left"):
CLIP-T (the prompt without the placeholder against the image), the edit score (the edited
attribute as asked) overall and per attribute. Then the vectors' norm, the training steps
and wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.evaluation.scores import measure_images, read_concept, score_images
from finetune.sampling import SamplerSettings
from finetune.sampling.renderer import PromptRenderer, expand_prompt

CONCEPT_PROMPT = "a photo of {}"
# What the concept's photos show but the concept does not own: each of these attributes' other values is an edit.
CONTEXT_ATTRIBUTES = ("background", "size", "position")


@dataclass
class QualityRow:
    name: str
    clip_i: float
    clip_t: float
    attribute_score: float
    edit_score: float
    attributes: dict[str, float]
    never_named: float
    edits: dict[str, float] = field(default_factory=dict)  # context attribute -> edit score of its prompts
    norm: float | None = None  # mean L2 norm of the placeholder's vectors (None: the oracle has none)
    steps: int | None = None  # training steps of a learned row (where it stopped)
    train_seconds: float | None = None
    prompts: list[str] = field(default_factory=list)


# Training methods compared by `scripts/quality.py --methods all`: row name -> Hydra overrides of the train config.
METHODS: dict[str, tuple[str, ...]] = {
    "free norm (before 2026-11-27)": ("token.norm=null",),
    "norm = vocabulary mean (default)": ("token.norm=vocabulary",),
    "norm = initializer's": ("token.norm=initializer",),
    "L2 to initializer 0.001": ("token.norm=null", "trainer.l2_to_initializer=0.001"),
    "L2 to initializer 0.01": ("token.norm=null", "trainer.l2_to_initializer=0.01"),
    "context in captions": ("token.norm=null", "data.context='large, in the center, on a white background'"),
    "context in captions + norm": ("token.norm=vocabulary",
                                   "data.context='large, in the center, on a white background'"),
    "early stopping (max 2000 steps)": ("trainer.early_stopping=true", "trainer.max_steps=2000"),
}


def context_edits(target: dict) -> dict[str, tuple[str, str]]:
    """Every edit of the concept's context: {prompt with {}: (attribute, value)} for each nameable value of the
    CONTEXT_ATTRIBUTES that `target` does not have ("{} on a blue background", "a small {}", "{} on the left")."""
    from finetune.toyworld import nameable_values
    from finetune.toyworld.captions import POSITION_PHRASES

    phrase = {"background": "{{}} on a {} background".format, "size": "a {} {{}}".format,
              "position": lambda value: "{} " + POSITION_PHRASES[value]}
    return {phrase[a](v): (a, v) for a in CONTEXT_ATTRIBUTES for v in nameable_values(a) if v != target.get(a)}


def oracle_prompts(target: dict, never_named: list[str]) -> tuple[str, list[str]]:
    """The oracle's concept prompt and edit prompts: the nameable attributes (and each edit) written out."""
    from finetune.toyworld import describe

    named = {k: v for k, v in target.items() if k not in never_named}
    return (expand_prompt(CONCEPT_PROMPT, describe(named)),
            [describe({**named, attribute: value}) for attribute, value in context_edits(target).values()])


def quality_row(
    name: str, renderer: PromptRenderer, judge, reference: np.ndarray, target: dict, never_named: list[str],
    concept_prompt: str, edit_prompts: list[str], samples: int, settings: SamplerSettings, placeholder: str,
) -> QualityRow:
    """Score `samples` images of `concept_prompt` and `samples // 2` of each of the `edit_prompts`
    (in `context_edits(target)` order)."""
    edits = context_edits(target)
    concept = renderer.render([concept_prompt], settings, samples, progress=False)
    images = np.stack([r.image for r in concept])
    main = score_images(images, [concept_prompt] * len(images), placeholder, judge=judge, reference=reference, target=target)
    measured = measure_images(images)

    per_edit = max(1, samples // 2)
    edited = renderer.render(edit_prompts, settings, per_edit, progress=False)
    edit_images = np.stack([r.image for r in edited])
    # CLIP-T compares each image with its edit prompt without the placeholder ("on a green background").
    clip_t_texts = [expand_prompt(p, "").strip() for p in edits for _ in range(per_edit)]
    edit_scores = score_images(edit_images, [r.prompt for r in edited], placeholder, judge=judge, clip_t_texts=clip_t_texts)
    wanted = [v for v in edits.values() for _ in range(per_edit)]
    edit_ok = np.array([m.get(attribute) == value for m, (attribute, value) in zip(measure_images(edit_images), wanted)])
    by_attribute = {a: float(np.mean([ok for ok, (b, _) in zip(edit_ok, wanted) if b == a]))
                    for a in CONTEXT_ATTRIBUTES if any(b == a for b, _ in wanted)}
    return QualityRow(
        name=name, clip_i=main["clip_i"], clip_t=edit_scores["clip_t"], attribute_score=main["attribute_score"],
        edit_score=float(np.mean(edit_ok)), attributes=main["attributes"], edits=by_attribute,
        never_named=float(np.mean([all(m.get(a) == target[a] for a in never_named) for m in measured])),
        prompts=[concept_prompt, *edit_prompts],
    )


def run_quality(cfg, run_dir: str | Path, samples: int = 32, seed: int = 1000, progress: bool = True,
                methods: dict | None = None) -> list[QualityRow]:
    """Train `cfg` (a TrainConfig on a toy-world concept) into `run_dir`, then score the rows (random
    token, initializer token, learned token, oracle prompt).

    With `methods` ({row name: TrainConfig}), each method is trained into `run_dir/<n>-<slug>` instead
    and scored as one learned row (its norm, steps and train time): the fidelity-editability table."""
    from finetune.assembly import build_pipeline, resolve_model
    from finetune.errors import ConfigError
    from finetune.evaluation.judge import load_judge
    from finetune.evaluation.stage import reference_images

    meta = read_concept(cfg.data.concept_dir) or {}
    target = meta.get("toyworld_attributes")
    if target is None:
        raise ConfigError(f"data.concept_dir={cfg.data.concept_dir}: no concept.json with toyworld_attributes; "
                          "the quality benchmark needs a toy-world concept (scripts/make_concept.py)")
    source = resolve_model(cfg.model)
    judge = load_judge(cfg.model.judge, source.preset)
    if judge is None:
        raise ConfigError(f"model={cfg.model.preset}: model.judge is not set; the quality benchmark needs a CLIP judge")

    placeholder = cfg.token.placeholder
    pipelines = {}

    def pipeline_for(num_vectors: int):
        if num_vectors not in pipelines:
            pipelines[num_vectors] = build_pipeline(source, placeholder, num_vectors, cfg.data.resolution,
                                                    truncate_long_prompts=cfg.token.truncate_long_prompts)
        return pipelines[num_vectors]

    settings = SamplerSettings(num_steps=cfg.eval.num_steps, guidance_scale=cfg.eval.guidance_scale, eta=0.0, seed=seed)
    never_named = meta.get("never_named", [])
    common = dict(judge=judge, reference=reference_images(cfg.data.concept_dir, cfg.data.resolution), target=target,
                  never_named=never_named, samples=samples, settings=settings, placeholder=placeholder)
    token_prompts = dict(concept_prompt=expand_prompt(CONCEPT_PROMPT, placeholder),
                         edit_prompts=[expand_prompt(p, placeholder) for p in context_edits(target)])

    def token_row(name: str, vectors: np.ndarray) -> QualityRow:
        pipeline = pipeline_for(len(vectors))
        pipeline.set_vectors(vectors)
        row = quality_row(name, renderer=pipeline.renderer, **token_prompts, **common)
        row.norm = float(np.linalg.norm(np.asarray(vectors, np.float64), axis=1).mean())
        return row

    def learned_row(name: str, method_cfg, method_dir: Path) -> QualityRow:
        row = token_row(name, train_and_load(method_cfg, method_dir))
        metrics = _read_metrics(method_dir)
        row.steps = int(metrics["steps"])
        row.train_seconds = round(float(metrics["train_seconds"]), 1)
        return row

    start = pipeline_for(cfg.token.num_vectors)
    rows = [token_row("random token", start.initial_vectors(None, seed)),
            token_row("initializer token", start.initial_vectors(cfg.token.initializer, cfg.seed))]
    if progress:
        for row in rows:
            _print_row(row)
    for i, (name, method_cfg) in enumerate((methods or {"learned token": cfg}).items()):
        method_dir = Path(run_dir) / f"{i}-{_slug(name)}" if methods else Path(run_dir)
        rows.append(learned_row(name, method_cfg, method_dir))
        if progress:
            _print_row(rows[-1])
    rows.append(quality_row("oracle prompt", renderer=start.renderer,
                            **dict(zip(("concept_prompt", "edit_prompts"), oracle_prompts(target, never_named))),
                            **common))
    if progress:
        _print_row(rows[-1])
    return rows


def train_and_load(cfg, run_dir: Path) -> np.ndarray:
    """Train `cfg` into `run_dir`; the learned vectors [num_vectors, D] of its final embedding file."""
    from finetune.export.diffusers_format import DEFAULT_FILENAME, load_diffusers_embedding
    from finetune.training.run import train

    train(cfg, run_dir)
    return load_diffusers_embedding(Path(run_dir) / DEFAULT_FILENAME)[1]


def _read_metrics(run_dir: Path) -> dict:
    from finetune.safefiles import read_json

    return read_json(Path(run_dir) / "metrics.json", "run metrics")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _print_row(row: QualityRow) -> None:
    print(f"  {row.name}: attribute score {row.attribute_score:.3f}, edit score {row.edit_score:.3f}, "
          f"CLIP-I {row.clip_i:.3f}, CLIP-T {row.clip_t:.3f}", flush=True)


def format_table(rows: list[QualityRow]) -> str:
    """A Markdown table of the rows."""
    from finetune.toyworld.checker import MEASURED

    attrs = sorted(rows[0].attributes, key=lambda a: MEASURED.index(a) if a in MEASURED else len(MEASURED))
    edits = [a for a in CONTEXT_ATTRIBUTES if a in rows[0].edits]
    head = ["row", "attribute score", "edit score", "CLIP-I", "CLIP-T", "never-named", *(f"edit: {a}" for a in edits),
            *attrs, "norm", "steps", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, f"{r.attribute_score:.3f}", f"{r.edit_score:.3f}", f"{r.clip_i:.3f}", f"{r.clip_t:.3f}",
                 f"{r.never_named:.3f}", *(f"{r.edits[a]:.2f}" for a in edits), *(f"{r.attributes[a]:.2f}" for a in attrs),
                 _cell(r.norm, ".3f"), _cell(r.steps, "d"), _cell(r.train_seconds, ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
