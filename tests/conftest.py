import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
CONCEPT = ROOT / "finetune" / "assets" / "concepts" / "red-checkered-heart"
PLACEHOLDER = f"<{CONCEPT.name}>"  # the default placeholder: the concept folder's name


def compose_train(*overrides: str):
    """The typed TrainConfig that `python -m finetune.train <overrides>` would run with."""
    from finetune.config import compose_config

    return compose_config("train", overrides)


# Small and fast: tiny preset, no rendering.
FAST = (
    "model=tiny", f"data.concept_dir={CONCEPT}", "trainer.batch_size=2", "eval.enabled=false",
    "trainer.checkpoint_every=0",
)


def pytest_collection_modifyitems(items):
    """Under pytest-xdist (`-n 2 --dist loadgroup`, the default addopts) the `slow` tests, which
    build the real SD v1 architecture (several GB each), all run in one worker, one at a time,
    so two of them never hold memory at once; the others share both workers."""
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("sd_v1"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True, scope="module")
def _free_models_after_each_module():
    """Large models (SD v1, SD 1.5 key coverage) of one test file are garbage by the next: free them
    and hand the freed heap back to the OS, so a worker's memory is one file's, not the sum of all
    it ran (a CI run was OOM-killed at 14 GB; two xdist workers share the machine's 24 GB)."""
    yield
    import ctypes
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
