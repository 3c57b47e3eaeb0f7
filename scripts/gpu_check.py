#!/usr/bin/env python
"""The tiny model's GPU results (scripts/gpu_bench.sh's tiny-gpu.tar) against this machine's CPU, on the JAX
backend: the first step's loss and gradient, and a 25-step DDIM render (tests/backend_runs.py).

    python scripts/gpu_check.py /path/to/tiny-gpu.tar [--cpu FOLDER]

FOLDER holds a CPU run of `KERAS_BACKEND=jax python tests/backend_runs.py FOLDER --no-tensorflow` (made here
when absent). Prints one row per GPU run: relative differences (max |a - b| / max |b|) to the CPU run, and,
where a second GPU run with the run's own settings came back, whether the two are the same bits."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"a": "default (TF32 matmuls)", "b": "default, again", "highest": "float32 matmuls (highest)"}


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def load(folder: Path) -> dict:
    return {"loss": json.loads((folder / "result.json").read_text())["step"]["loss"],
            "gradient": np.load(folder / "gradient.npy"), "render": np.load(folder / "render.npy")}


def compare(gpu_tar: Path, cpu: Path) -> list[dict]:
    if not (cpu / "result.json").exists():
        env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
        subprocess.run([sys.executable, str(ROOT / "tests" / "backend_runs.py"), str(cpu), "--no-tensorflow"],
                       env=env, check=True, capture_output=True)
    reference = load(cpu)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(gpu_tar) as tar:
            tar.extractall(tmp, filter="data")
        runs = {name: load(Path(tmp) / name) for name in RUNS if (Path(tmp) / name / "result.json").exists()}
    for name, run in runs.items():
        row = {"run": name, "settings": RUNS[name], "loss": run["loss"],
               "loss_rel": abs(run["loss"] - reference["loss"]) / abs(reference["loss"]),
               "gradient_rel": relative(run["gradient"], reference["gradient"]),
               "render_max_abs": float(np.abs(run["render"] - reference["render"]).max())}
        if name == "b" and "a" in runs:
            row["bitwise_equal_to_a"] = all(np.array_equal(run[k], runs["a"][k]) for k in ("gradient", "render"))
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tar", type=Path)
    parser.add_argument("--cpu", type=Path, default=Path(tempfile.gettempdir()) / "tiny-cpu-jax")
    args = parser.parse_args(argv)
    print(f"{'GPU run':<28} {'loss':>10} {'loss rel':>9} {'gradient rel':>12} {'render max abs':>14}")
    for row in compare(args.tar, args.cpu):
        print(f"{row['settings']:<28} {row['loss']:10.7f} {row['loss_rel']:9.1e} {row['gradient_rel']:12.1e} "
              f"{row['render_max_abs']:14.1e}" + (f"  same bits as a: {row['bitwise_equal_to_a']}"
                                                   if "bitwise_equal_to_a" in row else ""))


if __name__ == "__main__":
    main()
