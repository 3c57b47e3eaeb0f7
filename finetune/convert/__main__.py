"""finetune-convert (or python -m finetune.convert) source=PATH out=DIR [config=DIR] [allow_pickle=true]

Convert an SD v1 checkpoint (a diffusers folder or a CompVis single file) into the project's
weight files: DIR/{text_encoder,unet,vae_encoder,vae_decoder}.safetensors and DIR/preset.json.
Use the result with `finetune-train model=diffusers model.checkpoint=DIR`.
A user error prints one line, `error: ...`, and exits with code 2 (as `finetune.cli`).
"""

from __future__ import annotations

import os
import resource
import sys
import time

from finetune.cli import fail as _fail, import_tensorflow_silently as _import_tensorflow_silently

KEYS = {
    "source": "a diffusers SD v1 folder (unet/, vae/, text_encoder/) or a CompVis single file (.safetensors)",
    "out": "the folder to write the project's weight files and preset.json to",
    "config": "for a CompVis file: a folder with unet/ vae/ text_encoder/ config.json files (default: "
              "read from the weight shapes, with SD v1's attention heads)",
    "allow_pickle": "true to read .ckpt/.bin/.pt pickles, with torch.load(weights_only=True) only; "
                    "only for files you trust (default false)",
}
USAGE = __doc__.split("\n\n")[0] + "\n\n" + "\n".join(f"  {k:<13} {v}" for k, v in KEYS.items())


def parse(argv: list[str]) -> dict:
    args = {"config": None, "allow_pickle": False}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in KEYS:
            _fail(f"unexpected argument {arg!r}; use key=value with keys {', '.join(KEYS)} (see --help)")
        args[key] = value
    for key in ("source", "out"):
        if not args.get(key):
            _fail(f"{key}= is required (see finetune-convert --help)")
    flag = str(args["allow_pickle"]).lower()
    if flag not in ("true", "false"):
        _fail(f"allow_pickle={args['allow_pickle']}: use true or false")
    args["allow_pickle"] = flag == "true"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    args = parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _import_tensorflow_silently()
    from finetune.convert import convert_checkpoint
    from finetune.errors import FinetuneError

    start = time.perf_counter()
    try:
        written = convert_checkpoint(args["source"], args["out"], args["config"], args["allow_pickle"])
    except FinetuneError as e:
        _fail(str(e))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux
    for path in written.values():
        print(f"wrote {path}")
    print(f"converted {args['source']} in {time.perf_counter() - start:.1f} s (peak memory {peak_gb:.2f} GiB); "
          f"use it with: finetune-train model=diffusers model.checkpoint={args['out']}")
    return 0


def cli() -> None:
    """The `finetune-convert` console script (pyproject.toml [project.scripts])."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
