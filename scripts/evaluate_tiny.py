#!/usr/bin/env python
"""Check the pretrained tiny model: does it draw "a {color} {shape}" as asked?

    python scripts/evaluate_tiny.py                                 # the weights in finetune/assets/tiny
    python scripts/evaluate_tiny.py --weights-dir outputs/pretrain_tiny/assets --json report.json --grid samples.png

Prints color / shape / both accuracy of the toy-world checker on 8 samples of every
prompt (per prompted shape and per measured size too), and the checker's accuracy on
VAE round trips of real renders (the ceiling). Gates: color >= 80%, shape >= 65%, both >= 60%.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from finetune.pretraining.pipeline import default_export_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=default_export_dir("tiny"), help="default: %(default)s")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--num-steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ceiling-images", type=int, default=512, help="renders for the VAE round-trip ceiling (0: skip)")
    parser.add_argument("--json", type=Path, help="write the full report (with every image's measurement) here")
    parser.add_argument("--grid", type=Path, help="write a PNG of all samples here (one row per prompt)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    from PIL import Image

    from finetune.io import write_bytes_atomic, write_json_atomic
    from finetune.models.presets import get_preset
    from finetune.pretraining.evaluate import format_report, text_to_image_accuracy, vae_round_trip_accuracy
    from finetune.pretraining.pipeline import load_model

    preset = get_preset(args.preset)
    names = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
    missing = [n for n in names if not (args.weights_dir / f"{n}.safetensors").is_file()]
    if missing:
        print(f"error: {args.weights_dir} has no {', '.join(n + '.safetensors' for n in missing)}; "
              "run scripts/pretrain_tiny.py first", file=sys.stderr)
        return 2
    models = {n: load_model(preset, n, args.weights_dir / f"{n}.safetensors") for n in names}
    t2i, rows, images = text_to_image_accuracy(
        preset, models["text_encoder"], models["unet"], models["vae_decoder"],
        samples_per_prompt=args.samples_per_prompt, guidance_scale=args.guidance_scale,
        num_steps=args.num_steps, seed=args.seed,
    )
    ceiling = (vae_round_trip_accuracy(models["vae_encoder"], models["vae_decoder"], args.ceiling_images)
               if args.ceiling_images else None)
    print(format_report(t2i, ceiling))
    if args.json:
        write_json_atomic(args.json, {"text_to_image": t2i, "vae_ceiling": ceiling, "samples": rows})
    if args.grid:
        n = args.samples_per_prompt
        grid = np.concatenate([np.concatenate(list(images[i : i + n]), axis=1) for i in range(0, len(images), n)])
        import io

        buffer = io.BytesIO()
        Image.fromarray(grid).save(buffer, format="PNG")
        write_bytes_atomic(args.grid, buffer.getvalue(), "grid")
    return 0 if all(t2i["gates"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
