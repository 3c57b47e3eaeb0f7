"""finetune-export (or python -m finetune.export) INPUT --to FORMAT[,FORMAT...] --out DIR [--name NAME] [--allow-pickle]

Convert a learned embedding between the formats of `finetune.export.formats`
(diffusers, a1111_pt, a1111_safetensors, kohya). Each output goes to DIR/<format>/.
A user error prints one line, `error: ...`, and exits with code 2 (as `finetune.cli`).
"""

from __future__ import annotations

import argparse
import sys

from finetune.cli import fail as _fail
from finetune.errors import FinetuneError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + error; keep it to one line
        _fail(f"{message} (see finetune-export --help)")


def build_parser() -> argparse.ArgumentParser:
    from finetune.export.formats import FORMATS

    lines = "\n".join(f"  {key:<18} {fmt.description}" for key, fmt in FORMATS.items())
    parser = _Parser(
        prog="finetune-export",
        description="Convert a textual-inversion embedding file between formats.",
        epilog=f"formats:\n{lines}\n\nexample: finetune-export outputs/tiny/RUN/learned_embeds.safetensors "
        "--to a1111_pt,kohya --out exported/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="INPUT", help="embedding file (.safetensors, or .pt/.bin with --allow-pickle)")
    parser.add_argument("--to", required=True, help=f"comma-separated formats: {','.join(FORMATS)}")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder; each format goes to DIR/<format>/")
    parser.add_argument("--name", default=None,
                        help="token / embedding name (default: the input's; AUTOMATIC1111 and kohya files are named after it)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a .pt/.bin pickle (only with torch.load(weights_only=True)); only for files you trust")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from finetune.export.formats import convert

    formats = [f for f in args.to.split(",") if f.strip()]
    if not formats:
        _fail("--to needs at least one format")
    try:
        emb, written = convert(args.input, args.out, formats, name=args.name, allow_pickle=args.allow_pickle,
                               opt_in="--allow-pickle")
    except FinetuneError as e:
        _fail(str(e))
    except ValueError as e:  # bad vectors (wrong shape, NaN) reported by the writers
        _fail(f"{args.input}: {e}")
    print(f"read {args.input} ({emb.format}, name {emb.name!r}, {emb.vectors.shape[0]} x {emb.vectors.shape[1]})")
    for fmt, path in written.items():
        print(f"wrote {fmt}: {path}")
    return 0


def cli() -> None:
    """The `finetune-export` console script (pyproject.toml [project.scripts])."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
