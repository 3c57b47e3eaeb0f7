"""Many runs: a 2-job Hydra multirun with the joblib launcher and with submitit_local, then the
table of the sweep (python -m finetune.runs)."""

import subprocess
import sys

import numpy as np
import pytest

from finetune.export.diffusers_format import load_diffusers_embedding
from finetune.runs import read_overrides
from tests.conftest import ROOT

TINY = ["model=tiny_random", "trainer.max_steps=3", "trainer.batch_size=2", "trainer.checkpoint_every=0",
        "eval.enabled=false", "data.crops_per_image=1"]


@pytest.mark.parametrize("launcher", ["parallel", "local_queue"])  # configs/hydra/launcher/: joblib, submitit_local
def test_two_job_multirun_and_its_table(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "finetune.train", "-m", f"hydra/launcher={launcher}", *TINY, "seed=0,1",
               f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    vectors = []
    for job, seed in (("0", 0), ("1", 1)):
        run = sweep / job
        assert f"seed={seed}" in read_overrides(run)
        assert (run / "metrics.json").is_file()
        _, v, meta = load_diffusers_embedding(run / "learned_embeds.safetensors")
        assert meta["steps"] == "3" and np.all(np.isfinite(v))
        vectors.append(v)
    assert not np.array_equal(*vectors)  # two seeds, two runs
    if launcher == "local_queue":
        assert (sweep / ".submitit").is_dir()  # submitit's job folders with their logs

    table = subprocess.run([sys.executable, "-m", "finetune.runs", f"root={sweep}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    rows = [ln for ln in table.stdout.splitlines()[2:] if ln.strip()]
    assert [r.split()[0] for r in rows] == ["0", "1"]
    assert "seed=0" in rows[0] and "seed=1" in rows[1]
