"""finetune-generate (python -m finetune.generate) generate=<mode> embeddings=[PATH,...] [overrides]: txt2img, img2img,
inpaint / outpaint, mix, walk and variations with learned embeddings (finetune/generation/)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from finetune.cli import job_guard, quiet_frameworks, run_cli
from finetune.generation.config import register_generate_schema

register_generate_schema()


@hydra.main(version_base="1.3", config_path="configs", config_name="generate")
def main(cfg: DictConfig) -> None:
    quiet_frameworks(cfg.verbose)
    from finetune.generation.job import generate

    run_dir = HydraConfig.get().runtime.output_dir
    with job_guard(run_dir):
        grid = generate(OmegaConf.to_object(cfg), run_dir)
    print(f"done: {grid}")


def cli() -> None:
    """The `finetune-generate` console script (pyproject.toml [project.scripts]); `python -m finetune.generate` is the same."""
    run_cli(main)


if __name__ == "__main__":
    cli()
