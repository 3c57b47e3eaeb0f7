"""The evaluation stage: render the eval prompts with the learned token, save each image and a labelled grid."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from finetune.evaluation.grid import make_grid, save_png_atomic
from finetune.evaluation.render import PromptRenderer, RenderedImage, expand_prompt
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
