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


# Tests that need something outside the project (the network, a system package, an optional extra)
# skip with a reason saying so; CI (.ci/run) sets FINETUNE_REQUIRE_ALL=1, which turns such a skip into
# a failure, so that CI runs them all. Skips for other reasons (e.g. root ignores file permissions) stay skips.
REQUIRE_ALL = "FINETUNE_REQUIRE_ALL"
NEEDS = "needs "  # how such skip reasons start: needs(...) or pytest.importorskip(..., reason="needs ...")


def needs(what: str) -> None:
    """Skip the calling test because `what` (the network, a system package, ...) is missing."""
    pytest.skip(f"needs {what}")


def _fail_needed_skip(report) -> None:
    if os.environ.get(REQUIRE_ALL) == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        if reason.startswith(NEEDS):
            report.outcome = "failed"
            report.longrepr = f"{REQUIRE_ALL}=1 (CI) runs every test, but this one was skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_needed_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # a whole module skipped at import (pytest.importorskip at the top)
    outcome = yield
    _fail_needed_skip(outcome.get_result())


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
    import sys

    if "keras" not in sys.modules:  # nothing was built
        return
    import keras

    keras.backend.clear_session()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
