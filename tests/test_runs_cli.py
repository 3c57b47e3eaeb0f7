"""python -m finetune.runs: past runs with their overrides and final metrics as a table."""

import subprocess
import sys

from tests.conftest import ROOT
from tests.tracked_runs import runs_root, tensorboard_run, wandb_run


def _runs(*args):
    return subprocess.run([sys.executable, "-m", "finetune.runs", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_lists_two_runs_with_overrides_and_final_metrics(tmp_path_factory):
    runs = [wandb_run(tmp_path_factory), tensorboard_run(tmp_path_factory)]
    root = runs_root(tmp_path_factory)
    result = _runs(f"root={root}")
    assert result.returncode == 0, result.stderr
    header, rule, *rows = result.stdout.splitlines()
    assert header.split() == ["run", "final_loss", "loss_last_10", "steps", "wall_s", "vector_norm", "overrides"]
    assert set(rule) <= {"-", " "}
    assert len(rows) == 2
    by_run = {row.split()[0]: row for row in rows}
    for run_dir, metrics in runs:
        row = by_run[str(run_dir.relative_to(root))]
        cells = row.split()
        assert cells[1] == f"{metrics['final_loss']:.4g}" and cells[3] == "4"
        assert cells[5] == f"{metrics['learned_vector_norms'][0]:.3g}"
    assert "logger=wandb" in by_run["tiny/wandb-run"]
    assert "logger=tensorboard trainer.learning_rate=0.001" in by_run["tiny/tensorboard-run"]


def test_empty_and_missing_roots(tmp_path):
    result = _runs(str(tmp_path))
    assert result.returncode == 0 and "no runs under" in result.stdout
    result = _runs(f"root={tmp_path / 'nowhere'}")
    assert result.returncode == 2 and "no such folder" in result.stderr
    assert _runs("--help").stdout.startswith("usage:")
