"""finetune-runs (or python -m finetune.runs) [root=outputs]: the runs under a folder as a table, with their config
overrides and final metrics, to compare runs without a dashboard.

A run folder is one that holds metrics.json and .hydra/overrides.yaml (what `python -m
finetune.train` and `python -m finetune.evaluate` leave).
"""

from __future__ import annotations

import sys
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.safefiles import describe_path, read_json

USAGE = ("usage: finetune-runs [root=DIR]   (or python -m finetune.runs; default: root=outputs)\n"
         "the runs under a folder as a table: their config overrides and final metrics")
MISSING = "-"


def read_overrides(run_dir: str | Path) -> list[str] | None:
    """The command-line overrides Hydra recorded in <run>/.hydra/overrides.yaml; None without that file."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path) or []]


def find_runs(root: str | Path) -> list[Path]:
    root = Path(root)
    return sorted(m.parent for m in root.rglob("metrics.json") if (m.parent / ".hydra" / "overrides.yaml").is_file())


def _number(value, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def run_row(run_dir: Path, root: Path) -> dict[str, str]:
    metrics = read_json(run_dir / "metrics.json", "metrics file")
    norms = metrics.get("learned_vector_norms")
    return {
        "run": str(run_dir.relative_to(root)),
        "final_loss": _number(metrics.get("final_loss")),
        "loss_last_10": _number(metrics.get("mean_loss_last_10")),
        "steps": _number(metrics.get("steps")),
        "wall_s": _number(metrics.get("wall_seconds"), 3),
        "vector_norm": " ".join(_number(n, 3) for n in norms) if norms else MISSING,
        "overrides": " ".join(read_overrides(run_dir) or []) or "(defaults)",
    }


def format_table(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines.append("  ".join("-" * widths[c] for c in columns))
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if len(args) > 1:
        print(f"error: one argument at most\n{USAGE}", file=sys.stderr)
        return 2
    root = Path(args[0].removeprefix("root=") if args else "outputs")
    if not root.is_dir():
        print(f"error: root={root}: no such folder", file=sys.stderr)
        return 2
    runs = find_runs(root)
    if not runs:
        print(f"no runs under {root} (a run folder holds metrics.json and .hydra/overrides.yaml)")
        return 0
    rows = []
    for run in runs:
        try:
            rows.append(run_row(run, root))
        except FinetuneError as e:  # one damaged run folder does not hide the others
            print(f"warning: skipped {describe_path(run)}: {' '.join(str(e).split())}", file=sys.stderr)
    if rows:
        print(format_table(rows))
    return 0


def cli() -> None:
    """The `finetune-runs` console script (pyproject.toml [project.scripts])."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
