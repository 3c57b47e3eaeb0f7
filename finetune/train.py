"""python -m finetune.train [overrides]: learn a placeholder token from a concept folder (see finetune/configs/train.yaml)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from finetune.cli import job_guard, quiet_frameworks, run_cli
from finetune.config import register_schemas

register_schemas()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> dict:
    quiet_frameworks(cfg.verbose)
    from finetune.training.run import train

    run_dir = HydraConfig.get().runtime.output_dir
    with job_guard(run_dir):
        metrics = train(OmegaConf.to_object(cfg), run_dir)
    loss = metrics.get("final_loss")
    loss = "no training step" if loss is None else f"final loss {loss:.4f}"
    print(f"done: {run_dir} ({loss}, {metrics['wall_seconds']:.0f} s)")
    return metrics


def cli() -> None:
    """The `finetune-train` console script (pyproject.toml [project.scripts]); `python -m finetune.train` is the same."""
    run_cli(main)


if __name__ == "__main__":
    cli()
