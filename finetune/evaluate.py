"""python -m finetune.evaluate embedding=PATH [overrides]: render the eval prompts with a learned embedding."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from finetune.cli import job_guard, quiet_frameworks, run_cli
from finetune.config import register_schemas

register_schemas()


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    quiet_frameworks(cfg.verbose)
    from finetune.evaluation.stage import evaluate_embedding

    run_dir = HydraConfig.get().runtime.output_dir
    with job_guard(run_dir):
        from finetune.validation import validate_evaluate_config

        typed = OmegaConf.to_object(cfg)
        validate_evaluate_config(typed)  # every key before any work
        grid = evaluate_embedding(typed, run_dir)
    print(f"done: {grid}")


def cli() -> None:
    """The `finetune-evaluate` console script (pyproject.toml [project.scripts]); `python -m finetune.evaluate` is the same."""
    run_cli(main)


if __name__ == "__main__":
    cli()
