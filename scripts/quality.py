#!/usr/bin/env python
"""The learning-quality benchmark on the bundled toy-world concept (finetune/benchmarks/quality.py).

    python scripts/quality.py                          # the default run (README command 1), 32 samples per row
    python scripts/quality.py --samples 64 trainer.max_steps=400 token.num_vectors=2
    python scripts/quality.py --methods all             # one learned row per training method (METHODS)

Trains the default configuration (plus any Hydra overrides) into outputs/quality/<time>/,
then renders the same seeds for four rows (random token, initializer token, learned
token, oracle prompt) and prints one Markdown table; quality.json and quality.md are
written next to the run's files. The same arguments give the same numbers.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from finetune.cli import quiet_frameworks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of finetune/configs/train.yaml")
    parser.add_argument("--samples", type=int, default=32, help="images per row (>= 32 for the published table)")
    parser.add_argument("--seed", type=int, default=1000, help="first sampling seed (training keeps its own seed)")
    parser.add_argument("--methods", default=None,
                        help="'all' or comma-separated names of finetune.benchmarks.quality.METHODS: "
                             "train and score each (default: the configuration as given)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: outputs/quality/<time>)")
    args = parser.parse_args()
    quiet_frameworks(False)

    from finetune.cli import job_guard
    from finetune.config import compose_config
    from finetune.errors import ConfigError
    from finetune.benchmarks.quality import METHODS, format_table, run_quality
    from finetune.io import write_bytes_atomic, write_json_atomic

    out = args.out or Path("outputs") / "quality" / time.strftime("%Y-%m-%d_%H-%M-%S")
    with job_guard(out):
        cfg = compose_config("train", args.overrides)
        methods = None
        if args.methods:
            names = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
            unknown = [m for m in names if m not in METHODS]
            if unknown:
                raise ConfigError(f"--methods: unknown {unknown[0]!r}; the methods are {list(METHODS)}")
            methods = {m: compose_config("train", [*args.overrides, *METHODS[m]]) for m in names}
        rows = run_quality(cfg, out, samples=args.samples, seed=args.seed, methods=methods)
    table = format_table(rows)
    command = "python scripts/quality.py " + " ".join([f"--samples {args.samples}", f"--seed {args.seed}",
                                                       *([f"--methods {args.methods}"] if args.methods else []),
                                                       *args.overrides])
    write_json_atomic(out / "quality.json", {"command": command, "rows": [asdict(r) for r in rows]})
    write_bytes_atomic(out / "quality.md", f"`{command.strip()}`\n\n{table}\n".encode(), "table")
    print(table)
    print(f"\n{out}/quality.json, quality.md; the run's own files are in {out}")


if __name__ == "__main__":
    from finetune.cli import run_cli

    run_cli(main)
