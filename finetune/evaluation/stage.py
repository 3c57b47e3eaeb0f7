"""The evaluation stage: render the eval prompts with the learned token, save each image and a labelled grid."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.evaluation.grid import make_grid, save_png_atomic
from finetune.sampling.renderer import PromptRenderer, RenderedImage, expand_prompt
from finetune.sampling import SamplerSettings


def sampler_settings(eval_cfg) -> SamplerSettings:
    return SamplerSettings(
        num_steps=eval_cfg.num_steps, guidance_scale=eval_cfg.guidance_scale, eta=eval_cfg.eta, seed=eval_cfg.seed
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")[:60] or "prompt"


def render_eval_prompts(renderer: PromptRenderer, eval_cfg, placeholder: str, out_dir: Path) -> list[RenderedImage]:
    """Writes out_dir/<i>-<prompt>-seed<s>.png and out_dir/grid.png; returns the images."""
    prompts = [expand_prompt(p, placeholder) for p in eval_cfg.prompts]
    rendered = renderer.render(
        prompts, sampler_settings(eval_cfg), eval_cfg.images_per_prompt, eval_cfg.negative_prompt
    )
    out_dir = Path(out_dir)
    for i, r in enumerate(rendered):
        save_png_atomic(Image.fromarray(r.image), out_dir / f"{i:03d}-{_slug(r.prompt)}-seed{r.seed}.png")
    grid = make_grid([r.image for r in rendered], [r.label for r in rendered], ncols=eval_cfg.images_per_prompt)
    save_png_atomic(grid, out_dir / "grid.png")
    return rendered


def reference_images(concept_dir: str | Path, resolution: int) -> np.ndarray:
    """The concept's images, center-cropped and resized to `resolution` (uint8): CLIP-I's reference set."""
    from finetune.data.images import find_images, load_image

    out = []
    for path in find_images(concept_dir):
        image = Image.fromarray(load_image(path))
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
        out.append(np.asarray(image))
    return np.stack(out)


def score_rendered(rendered: list[RenderedImage], placeholder: str, judge_cfg, preset, concept_dir,
                   resolution: int) -> dict | None:
    """CLIP-I / CLIP-T (with `model.judge`) and the toy-world attribute score (with a concept.json), per prompt.

    None when there is neither a judge nor a concept to compare with.
    """
    from finetune.evaluation.judge import load_judge
    from finetune.evaluation.scores import concept_attributes, score_by_prompt

    judge = load_judge(judge_cfg, preset)
    target = concept_attributes(concept_dir)
    if judge is None and target is None:
        return None
    reference = reference_images(concept_dir, resolution) if concept_dir and judge is not None else None
    return score_by_prompt(np.stack([r.image for r in rendered]), [r.prompt for r in rendered], placeholder,
                           judge=judge, reference=reference, target=target)


def evaluate_embedding(cfg, run_dir: str | Path) -> Path:
    """Load `cfg.embedding` (any format of finetune.export.formats; pickles only with
    cfg.allow_pickle) into the model and render `cfg.eval` prompts to run_dir/samples."""
    from finetune.assembly import build_pipeline, check_resolution, require_weights, resolve_model
    from finetune.export.formats import load_any, trigger_placeholder
    from finetune.io import write_json_atomic

    source = resolve_model(cfg.model)
    check_resolution(source.preset, cfg.resolution, "resolution")
    require_weights(source, ["text_encoder", "unet", "vae_decoder"])
    embedding = load_any(cfg.embedding, allow_pickle=cfg.allow_pickle, opt_in="allow_pickle=true")
    placeholder, vectors, metadata = trigger_placeholder(embedding), embedding.vectors, embedding.metadata
    pipeline = build_pipeline(source, placeholder, len(vectors), cfg.resolution, vectors,
                              cfg.token.truncate_long_prompts, what=f"embedding={cfg.embedding}")
    out_dir = Path(run_dir) / "samples"
    rendered = render_eval_prompts(pipeline.renderer, cfg.eval, placeholder, out_dir)
    quality = score_rendered(rendered, placeholder, cfg.model.judge, source.preset, cfg.eval.reference_dir,
                             cfg.resolution)
    write_json_atomic(Path(run_dir) / "metrics.json", {"embedding": str(cfg.embedding), "embedding_metadata": metadata,
                                                       "placeholder": placeholder, "num_vectors": len(vectors),
                                                       "embedding_format": embedding.format, "quality": quality})
    return out_dir / "grid.png"
