import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
CONCEPT = ROOT / "data" / "concepts" / "orange-checkered-heart"


def compose_train(*overrides: str):
    """The typed TrainConfig that `python -m finetune.train <overrides>` would run with."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from finetune.config import register_schemas

    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)
        return OmegaConf.to_object(cfg)


# Small and fast: tiny preset, no rendering.
FAST = (
    "model=tiny", f"data.concept_dir={CONCEPT}", "trainer.batch_size=2", "eval.enabled=false",
    "trainer.checkpoint_every=0",
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
