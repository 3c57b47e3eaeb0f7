"""Imports run one way (the layers of the design map): checked on the source, every import statement,
including the ones inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "finetune"


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def sources(*parts: str) -> list[Path]:
    out = []
    for part in parts:
        target = PACKAGE / part
        out += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return out


# (modules, the packages they must not import)
RULES = [
    (("models", "tokens", "diffusion", "errors.py", "io.py", "safefiles.py", "validation.py", "backends"),
     ("finetune.training", "finetune.convert", "finetune.evaluation", "finetune.sampling", "finetune.assembly",
      "finetune.data", "finetune.export")),
    (("sampling",), ("finetune.training", "finetune.convert", "finetune.evaluation", "finetune.assembly")),
    (("evaluation",), ("finetune.training", "finetune.convert", "finetune.benchmarks")),
    (("convert", "export"), ("finetune.training", "finetune.evaluation", "finetune.assembly")),
    (("assembly.py",), ("finetune.training", "finetune.evaluation")),
    (("training",), ("finetune.benchmarks", "finetune.train", "finetune.evaluate")),
]


@pytest.mark.parametrize("parts, forbidden", RULES, ids=["+".join(p) for p, _ in RULES])
def test_imports_run_one_way(parts, forbidden):
    wrong = [f"{path.relative_to(PACKAGE.parent)} imports {module}"
             for path in sources(*parts) for module in sorted(imported_modules(path))
             if any(module == f or module.startswith(f + ".") for f in forbidden)]
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_a_package():
    """`from finetune.x.y import _name` only inside package x."""
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        package = path.relative_to(PACKAGE).parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("finetune."):
                other = node.module.split(".")[1]
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private and other != package:
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}: {node.module} {private}")
    assert not wrong, "\n".join(wrong)
