"""Write a full-size Stable Diffusion 1.5-architecture diffusers folder with random weights.

    python scripts/make_random_sd15.py OUT_DIR [--dtype float32|float16] [--seed 0]

The UNet, VAE and CLIP text encoder are diffusers' / transformers' own classes with SD 1.5's
configs (`finetune.convert.configs.SD_V1_CONFIGS`), randomly initialized and saved with their
own `save_pretrained` as safetensors, plus a model_index.json and SD v1's scheduler config:
the layout of a real SD 1.5 download, for measuring `python -m finetune.convert` without one
(docs/conversion.md). Needs the parity extra: pip install -e ".[parity]".
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write (unet/, vae/, text_encoder/, scheduler/)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="weights' storage dtype")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # finetune imports Keras: keep TensorFlow's notices out
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from finetune.convert.configs import SD_V1_CONFIGS

    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    builders = {
        "unet": lambda: UNet2DConditionModel(**SD_V1_CONFIGS["unet"]),
        "vae": lambda: AutoencoderKL(**SD_V1_CONFIGS["vae"]),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**SD_V1_CONFIGS["text_encoder"])),
    }
    classes = {}
    for name, build in builders.items():
        start = time.perf_counter()
        model = build()
        if dtype != torch.float32:
            model = model.to(dtype)
        model.save_pretrained(args.out / name, safe_serialization=True)
        classes[name] = ["diffusers" if name != "text_encoder" else "transformers", type(model).__name__]
        count = sum(p.numel() for p in model.parameters())
        print(f"{name}: {count / 1e6:.1f} M parameters, {time.perf_counter() - start:.1f} s")
        del model
    DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, set_alpha_to_one=False, clip_sample=False,
    ).save_pretrained(args.out / "scheduler")
    classes["scheduler"] = ["diffusers", "DDIMScheduler"]
    index = {"_class_name": "StableDiffusionPipeline", **classes}
    (args.out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
