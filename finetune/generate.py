"""python -m finetune.generate generate=<mode> embeddings=[PATH,...] [overrides]: txt2img, img2img,
inpaint / outpaint, mix, walk and variations with learned embeddings (finetune/generation/)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from finetune.cli import job_guard, quiet_frameworks, run_cli
from finetune.generation.config import register_generate_schema

register_generate_schema()


@contextmanager
def _drop_log_if_no_results(run_dir):
    """Hydra's generate.log is not in finetune.cli's bookkeeping list: a run that fails before writing
    anything removes it here, so that job_guard then removes the folder."""
    try:
        yield
    except BaseException:
        run_dir = Path(run_dir)
        if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "generate.log"}:
            (run_dir / "generate.log").unlink(missing_ok=True)
        raise


@hydra.main(version_base="1.3", config_path="../configs", config_name="generate")
def main(cfg: DictConfig) -> None:
    quiet_frameworks(cfg.verbose)
    from finetune.generation.job import generate

    run_dir = HydraConfig.get().runtime.output_dir
    with job_guard(run_dir), _drop_log_if_no_results(run_dir):
        grid = generate(OmegaConf.to_object(cfg), run_dir)
    print(f"done: {grid}")


if __name__ == "__main__":
    run_cli(main)
