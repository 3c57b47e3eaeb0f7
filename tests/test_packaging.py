"""The package on its own: a wheel from `pip wheel .`, installed into a fresh virtual environment (no
editable install, no checkout on sys.path), runs from an empty folder with its console scripts.

The fresh environment gets the wheel and nothing else; the dependencies (TensorFlow & co.) are taken
from the test environment's site-packages by path, without that folder's .pth files, so the
editable install of the checkout stays invisible there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import needs

# One worker runs this file's tests (`--dist loadgroup`): they share one wheel, venv and training run.
pytestmark = pytest.mark.xdist_group("packaging")
REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("finetune-train", "finetune-evaluate", "finetune-export", "finetune-convert", "finetune-runs")
PLACEHOLDER = "<red-checkered-heart>"
# One short run that writes every output the README lists (checkpoints, previews, exports, a dashboard).
RUN = ("trainer.max_steps=20", "trainer.checkpoint_every=10", "eval.preview_every=10", "logger=tensorboard",
       "export.formats=[diffusers,a1111_safetensors,kohya]")


def _run(cmd, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder of the fresh venv, its environment variables, an empty working folder, the wheel)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"  # a copy: building in the checkout would leave build/ and *.egg-info there
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "finetune", source / "finetune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", root / "dist", "."],
                 cwd=source, env=os.environ, timeout=900)
    if build.returncode and any(w in build.stderr for w in ("NewConnectionError", "No matching distribution",
                                                             "Could not find a version")):
        needs(f"the network (PyPI) for the build backend: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    (wheel,) = (root / "dist").glob("finetune-*.whl")

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    install = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet",
                    wheel], cwd=root, env=os.environ)
    assert install.returncode == 0, install.stderr
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root,
                     os.environ).stdout.strip())
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "test-dependencies.pth").write_text("\n".join(deps) + "\n")  # paths only: their .pth files stay off
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), WANDB_MODE="offline")
    work = root / "empty"
    work.mkdir()
    return venv / "bin", env, work, wheel


def test_the_wheel_holds_configs_concept_and_tiny_model(installed):
    *_, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("finetune/configs/train.yaml", "finetune/configs/evaluate.yaml", "finetune/configs/model/tiny.yaml",
                 "finetune/configs/hydra/launcher/slurm.yaml", "finetune/pretraining/configs/tiny.yaml",
                 "finetune/assets/concepts/red-checkered-heart/concept.json",
                 "finetune/assets/concepts/red-checkered-heart/red-checkered-heart-04.png",
                 "finetune/assets/tiny/unet.safetensors", "finetune/assets/tiny/pretrain.json"):
        assert name in names, name
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in SCRIPTS:
        assert f"{script} = " in text, script


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    bin_dir, env, work, _ = installed
    code = "import finetune, sys; print(finetune.__file__); print(*sys.path, sep='\\n')"
    proc = _run([bin_dir / "python", "-c", code], work, env)
    assert proc.returncode == 0, proc.stderr
    location, *path = proc.stdout.splitlines()
    assert Path(location).is_relative_to(bin_dir.parent) and not Path(location).is_relative_to(REPO)
    assert all(Path(p or work).resolve() != REPO for p in path)  # the checkout is not on sys.path
    for script in SCRIPTS:
        assert (bin_dir / script).is_file(), script


@pytest.fixture(scope="module")
def trained(installed) -> subprocess.CompletedProcess:
    """The short run of RUN in outputs/run of the empty folder, by the installed console script."""
    bin_dir, env, work, _ = installed
    return _run([bin_dir / "finetune-train", *RUN, "hydra.run.dir=outputs/run"], work, env, timeout=900)


def test_train_from_an_empty_folder_writes_every_output(installed, trained):
    bin_dir, env, work, _ = installed
    proc = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = work / "outputs" / "run"
    assert f"done: {run} (final loss" in proc.stdout
    # Every row of the README's "What a run writes" table (wandb/: the other logger, tests/test_tracking.py).
    for rel in ("learned_embeds.safetensors", "learned_embeds-best.safetensors", "learned_embeds-steps-10.safetensors",
                "learned_embeds-steps-20.safetensors", "export/a1111_safetensors/red-checkered-heart.safetensors",
                "export/kohya/red-checkered-heart.safetensors", "samples/grid.png",
                "samples/previews/step-000010.png", "samples/previews/step-000020.png", "metrics.json", "loss.png",
                "embedding_norm.png", "progress.png", "report.html", "train.log", ".hydra/config.yaml"):
        assert (run / rel).is_file(), rel
    assert len(list((run / "samples").glob("0*-seed*.png"))) == 3 * 4  # 3 prompts x 4 images
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000010", "step-000020"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 20 and metrics["quality"]["all"]["clip_i"] > 0 and metrics["stop_reason"] == "max_steps"
    assert metrics["validation_history"]["step"] == [10, 20] and metrics["score_history"] == {"step": []}
    # The bundled concept from the installed package, the default placeholder from its folder's name.
    assert f"dataset of {bin_dir.parent}/lib/" in (run / "train.log").read_text()
    assert "site-packages/finetune/assets/concepts/red-checkered-heart" in (run / "train.log").read_text()
    from finetune.export.formats import load_any

    assert load_any(run / "learned_embeds.safetensors").name == PLACEHOLDER
    # the run table of finetune-runs
    table = _run([bin_dir / "finetune-runs", "root=outputs"], work, env)
    assert table.returncode == 0 and "run " in table.stdout and "trainer.max_steps=20" in table.stdout


def test_evaluate_loads_the_runs_kohya_export_with_its_placeholder(installed, trained):
    bin_dir, env, work, _ = installed
    assert trained.returncode == 0, trained.stderr[-3000:]
    kohya = work / "outputs" / "run" / "export" / "kohya" / "red-checkered-heart.safetensors"
    proc = _run([bin_dir / "finetune-evaluate", f"embedding={kohya}", "eval.num_steps=2", "eval.images_per_prompt=1",
                 "hydra.run.dir=outputs/eval"], work, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((work / "outputs" / "eval" / "metrics.json").read_text())
    assert (metrics["placeholder"], metrics["embedding_format"]) == (PLACEHOLDER, "kohya")


def test_help_begins_with_what_the_command_does(installed):
    bin_dir, env, work, _ = installed
    train = _run([bin_dir / "finetune-train", "--help"], work, env)
    assert train.returncode == 0, train.stderr
    assert train.stdout.startswith("finetune-train (or python -m finetune.train): teach a Stable Diffusion")
    assert "trainer.max_steps=N             optimizer steps (400)" in train.stdout
    assert train.stdout.index("Most-used keys") < train.stdout.index("== Configuration groups ==")
    evaluate = _run([bin_dir / "finetune-evaluate", "--help"], work, env)
    assert evaluate.stdout.startswith("finetune-evaluate (or python -m finetune.evaluate): render prompts")
    for script, first in (("finetune-export", "usage: finetune-export"), ("finetune-convert", "finetune-convert"),
                          ("finetune-runs", "usage: finetune-runs")):
        proc = _run([bin_dir / script, "--help"], work, env)
        assert proc.returncode == 0 and proc.stdout.startswith(first), (script, proc.stdout[:200], proc.stderr)


def test_shell_completion_of_the_console_scripts(installed):
    bin_dir, env, work, _ = installed
    install = _run([bin_dir / "finetune-train", "-sc", "install=bash"], work, env)
    assert install.returncode == 0, install.stderr
    assert install.stdout.rstrip().endswith("-F hydra_bash_completion finetune-train")
    for line, expected in (("finetune-train trainer.max_st", "trainer.max_steps="),
                           ("finetune-train model=ti", "model=tiny_random"),
                           ("finetune-train logger=", "logger=tensorboard")):
        query = _run([bin_dir / "finetune-train", "-sc", "query=bash"], work,
                     {**env, "COMP_LINE": line, "COMP_POINT": str(len(line))})
        assert query.returncode == 0 and expected in query.stdout.split(), (line, query.stdout, query.stderr)
