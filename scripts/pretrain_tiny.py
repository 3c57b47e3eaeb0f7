#!/usr/bin/env python
"""Pretrain the `tiny` preset on the toy world: VAE, CLIP, UNet, then export the weights.

    python scripts/pretrain_tiny.py                                   # finetune/pretraining/configs/tiny.yaml
    python scripts/pretrain_tiny.py vae.steps=20 clip.steps=20 unet.steps=20 out_dir=/tmp/p export_dir=/tmp/p/assets

Re-running the same command resumes a killed run (finished stages are skipped).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from finetune.cli import job_guard, quiet_frameworks, run_cli
from finetune.pretraining.config import register_pretrain_schema

register_pretrain_schema()
log = logging.getLogger("pretrain")


@hydra.main(version_base="1.3", config_path="../finetune/pretraining/configs", config_name="tiny")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    quiet_frameworks(cfg.verbose)
    from finetune.pretraining.pipeline import pretrain

    with job_guard(HydraConfig.get().runtime.output_dir):
        summary = pretrain(OmegaConf.to_object(cfg), log_fn=log.info)  # console + the run's log file
    print(f"done: {summary['total_megabytes']} MB of weights; summary in "
          f"{(cfg.export_dir or 'finetune/assets/' + cfg.preset)}/pretrain.json")


if __name__ == "__main__":
    run_cli(main)
