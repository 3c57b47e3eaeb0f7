"""Acceptance measurements of `python -m finetune.generate` on the tiny model (docs/generate.md).

    python scripts/generate_quality.py [--embedding tests/fixtures/red-checkered-heart.safetensors]
                                       [--samples 16] [--steps 25] [--out docs/generate_quality.json]

Fixed seeds: sample i uses toy-world scene seed i and noise seed i. The toy world's checker reads
the attributes back from the pixels; the tiny CLIP judge gives CLIP-I to the concept's images.
  img2img     a render of shape S in color C, prompt "a <other color> <other shape>", 6 strengths; also
              at guidance 1, with a prompt that keeps S and C ("a <C> <S> on a yellow background"), and
              with the tiny UNet replaced by the exact denoiser of 8192 toy-world scenes (what a model
              that learned the toy world perfectly would do)
  inpaint     a two-shape render, a box over its right half, a prompt for another shape there
              ("a green star on the right on a white background")
  outpaint    32 px added on the right: are the original pixels exactly where they were
  mix         "a photo of <concept>" and "a photo of a blue heart", weight w of the second
  walk        8 frames from "a photo of <concept>" to "a photo of shape" (the initializer)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

STRENGTHS = (0.0, 0.25, 0.3, 0.5, 0.75, 1.0)
MIX_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# (shape, color) of the input -> (shape, color) of the prompt
IMG2IMG_PAIRS = (("circle", "blue", "square", "red"), ("star", "green", "heart", "purple"),
                 ("square", "red", "triangle", "yellow"), ("heart", "purple", "circle", "green"))
INPAINT = (("circle", "blue", "star", "green"), ("square", "red", "heart", "blue"),
           ("triangle", "green", "circle", "red"), ("star", "purple", "square", "orange"))
SEAM = 3


def load(embedding: str, steps: int):
    from finetune.assembly import resolve_model
    from finetune.config import compose_config
    from finetune.generation.config import register_generate_schema
    from finetune.generation.job import build_generator, load_embeddings, make_tokenizer
    from finetune.sampling import SamplerSettings

    register_generate_schema()
    cfg = compose_config("generate", [f"embeddings=[{embedding}]", f"generate.num_steps={steps}"])
    source = resolve_model(cfg.model)
    concepts = load_embeddings(cfg.embeddings, source.preset.text_encoder.width, source.preset.name, False)
    tokenizer = make_tokenizer(concepts, source.preset.text_encoder.max_length)
    g = cfg.generate
    settings = SamplerSettings(num_steps=g.num_steps, guidance_scale=g.guidance_scale, eta=g.eta, seed=g.seed)
    return cfg, source, build_generator(source, concepts, tokenizer, cfg.resolution, g, settings, [], "")


def rate(measured, **want) -> float:
    return float(np.mean([all(m.get(k) == v for k, v in want.items()) for m in measured]))


# What the img2img prompt names, from the input's (S, C) and the pair's other shape and color:
# "conflicting" is the gate (another shape and color); "keeping" asks for a change that does
# not contradict the input (the input's shape and color on a yellow background).
IMG2IMG_PROMPTS = {
    "conflicting": lambda s, c, other_s, other_c: {"shape": other_s, "color": other_c},
    "keeping": lambda s, c, other_s, other_c: {"shape": s, "color": c, "background": "yellow"},
}
FIGURE_SAMPLE = 1  # the green star: docs/images/img2img-strengths.png shows its row per setting
FIGURE_ROWS = ("img2img", "img2img_keeping", "img2img_exact")
EXACT_POOL = 8192  # toy-world scenes the exact denoiser knows (docs/generate.md)


def exact_pool(gen, size: int = EXACT_POOL, seed: int = 99):
    """Latents [size, h, w, c] and scenes of `size` random toy-world renders (the pretraining distribution)."""
    from finetune.sampling.img2img import encode_latents
    from finetune.toyworld import dataset

    images, _, scenes = dataset.generate(size, seed=seed)
    latents = np.concatenate([encode_latents(gen.encoder, images[i:i + 512]) for i in range(0, size, 512)])
    return latents, scenes


def exact_denoiser(pool, wants: list[dict]):
    """(denoise_fn, contexts, uncond) for the sampling loop that runs the exact denoiser of `pool`:
    row b's context is b, conditioned on the pool scenes that have every attribute of wants[b]; the
    unconditional context is -1, the whole pool."""
    from finetune.diffusion.exact import exact_eps
    from finetune.diffusion.schedule import NoiseSchedule

    latents, scenes = pool
    alphas = NoiseSchedule().alphas_cumprod
    subsets = [latents[[all(getattr(sc, k) == v for k, v in want.items()) for sc in scenes]] for want in wants]

    def denoise_fn(x, t, context):
        rows = np.asarray(context)[:, 0, 0].astype(int)
        return np.stack([exact_eps(x[b], alphas[int(t[b])], subsets[r] if r >= 0 else latents)
                         for b, r in enumerate(rows)])

    contexts = np.arange(len(wants), dtype=np.float32).reshape(-1, 1, 1)
    return denoise_fn, contexts, np.full((1, 1, 1), -1.0, np.float32)


def img2img(gen, n: int, guidance_scale: float | None = None, strengths=STRENGTHS, prompt: str = "conflicting",
            pool=None) -> dict:
    """Rates over `n` inputs per strength: the input's shape and color read back (`input_kept`), every
    attribute the prompt names read (`prompt_read`), the mean pixel distance to the input. With `pool`
    (from `exact_pool`) the exact denoiser of those scenes replaces the tiny UNet."""
    from finetune.evaluation.scores import measure_images
    from finetune.sampling.img2img import encode_latents, img2img_latents
    from finetune.sampling.loop import denoise
    from finetune.toyworld.captions import describe
    from finetune.toyworld.render import Scene, render

    pairs = [IMG2IMG_PAIRS[i % len(IMG2IMG_PAIRS)] for i in range(n)]
    wants = [IMG2IMG_PROMPTS[prompt](*pair) for pair in pairs]
    inputs = np.stack([render(Scene(s, c, "large", "center", "white", "plain", seed=i))
                       for i, (s, c, _, _) in enumerate(pairs)])
    init, noise = encode_latents(gen.encoder, inputs), gen.renderer.noise(range(n))
    settings = gen.settings if guidance_scale is None else dataclasses.replace(gen.settings,
                                                                               guidance_scale=guidance_scale)
    if pool is None:
        denoise_fn, contexts, uncond = gen.renderer.denoise_fn, gen.encode([describe(w) for w in wants]), gen.encode([""])
    else:
        denoise_fn, contexts, uncond = exact_denoiser(pool, wants)

    def rates(images) -> dict:
        measured = measure_images(images)
        return {"input_kept": float(np.mean([m.get("shape") == s and m.get("color") == c
                                             for m, (s, c, _, _) in zip(measured, pairs)])),
                "prompt_read": float(np.mean([all(m.get(k) == v for k, v in want.items())
                                              for m, want in zip(measured, wants)]))}

    rows, strip = {}, []
    for strength in strengths:
        images = gen.decode(img2img_latents(denoise_fn, settings, init, noise, [contexts], uncond, strength,
                                            progress=False))
        rows[str(strength)] = {**rates(images),
                               "mean_pixel_distance": float(np.abs(images.astype(np.float32) - inputs).mean() / 255)}
        strip.append(images[FIGURE_SAMPLE % n])
    result = {"prompt": prompt, "example_prompt": describe(wants[0]), "guidance_scale": settings.guidance_scale,
              "denoiser": "tiny UNet" if pool is None else f"exact, {len(pool[0])} toy-world scenes",
              "strengths": rows, "_strip": (describe(wants[FIGURE_SAMPLE % n]), strip)}
    monotonic_over = [s for s in (0.0, 0.25, 0.5, 0.75, 1.0) if str(s) in rows]
    if len(monotonic_over) == 5:
        distances = [rows[str(s)]["mean_pixel_distance"] for s in monotonic_over]
        result["distance_monotonic_over_0_0.25_0.5_0.75_1"] = bool(np.all(np.diff(distances) > 0))
    if pool is None and "1.0" in rows:  # the model's txt2img rate, same prompts and seeds: strength 1's to compare
        txt = gen.decode(denoise(denoise_fn, settings, noise, [contexts], uncond, progress=False))
        result["txt2img_prompt_read"] = rates(txt)["prompt_read"]
    return result


def two_shapes(i: int, left: tuple, right: tuple) -> np.ndarray:
    from finetune.toyworld.render import Scene, render

    image = render(Scene(left[0], left[1], "small", "left", "white", "plain", seed=i))
    image[:, 32:] = render(Scene(right[0], right[1], "small", "right", "white", "plain", seed=1000 + i))[:, 32:]
    return image


def inpaint(gen, n: int) -> dict:
    from finetune.evaluation.scores import measure_images
    from finetune.sampling.img2img import encode_latents
    from finetune.sampling.inpaint import (box_mask, feather, inpaint_latents, latent_mask, pad_canvas,
                                           paste_back)
    from finetune.toyworld.captions import describe

    cases = [INPAINT[i % len(INPAINT)] for i in range(n)]
    inputs = np.stack([two_shapes(i, (a, ca), ("circle" if a != "circle" else "square", "yellow"))
                       for i, (a, ca, _, _) in enumerate(cases)])
    prompts = [describe({"color": cp, "shape": sp, "position": "right", "background": "white"})
               for _, _, sp, cp in cases]
    mask = box_mask((32, 0, 64, 64), 64, 64)
    m = latent_mask(mask, gen.renderer.vae_decoder.spec.downsampling_factor, 1)
    init = encode_latents(gen.encoder, inputs)
    latents = inpaint_latents(gen.renderer.denoise_fn, gen.settings, init, gen.renderer.noise(range(n)), m,
                              [gen.encode(prompts)], gen.encode([""]), 1.0, progress=False)
    blend = feather(mask, SEAM)
    outputs = np.stack([paste_back(img, x, blend) for img, x in zip(gen.decode(latents), inputs)])
    outside = blend == 0
    inside_only = outputs.copy()
    inside_only[:, :, :32] = 245  # the white background over the kept half: the checker reads the new shape
    measured = measure_images(inside_only)
    # outpaint: 32 px on the right of a plain render
    from finetune.toyworld.render import Scene, render

    originals = np.stack([render(Scene(s, c, "large", "center", "white", "plain", seed=i))
                          for i, (s, c, _, _) in enumerate(cases)])
    canvases, masks = zip(*[pad_canvas(x, 0, 32, 0, 0, "edge") for x in originals])
    canvas_mask = masks[0]
    out_latents = inpaint_latents(gen.renderer.denoise_fn, gen.settings, encode_latents(gen.encoder, np.stack(canvases)),
                                  gen.renderer.noise(range(n), (8, 12, init.shape[-1])),
                                  latent_mask(canvas_mask, gen.renderer.vae_decoder.spec.downsampling_factor, 1),
                                  [gen.encode(prompts)], gen.encode([""]), 1.0, progress=False)
    out_blend = feather(canvas_mask, SEAM, outward=False)
    outpainted = np.stack([paste_back(img, c, out_blend) for img, c in zip(gen.decode(out_latents), canvases)])
    return {
        "outside_dilated_mask_max_abs_diff": int(np.abs(outputs.astype(int) - inputs)[:, outside].max()),
        "dilation_px": SEAM,
        "inside_shape_read": float(np.mean(
            [mm.get("shape") == sp for mm, (_, _, sp, _) in zip(measured, cases)])),
        "inside_color_read": float(np.mean([mm.get("color") == cp for mm, (_, _, _, cp) in zip(measured, cases)])),
        "inside_shape_and_color_read": float(np.mean(
            [mm.get("shape") == sp and mm.get("color") == cp for mm, (_, _, sp, cp) in zip(measured, cases)])),
        "outpaint_original_pixels_exact": float(np.mean(outpainted[:, :, :64] == originals)),
        "_images": (inputs, outputs, outpainted),
    }


def mix(gen, n: int, placeholder: str, weights=MIX_WEIGHTS, modes=("blend", "guidance")) -> dict:
    from finetune.evaluation.scores import measure_images
    from finetune.sampling.loop import denoise
    from finetune.sampling.mix import blend_encodings

    a = np.repeat(gen.encode([f"a photo of {placeholder}"]), n, axis=0)
    b = np.repeat(gen.encode(["a photo of a blue heart"]), n, axis=0)
    uncond, noise = gen.encode([""]), gen.renderer.noise(range(n))
    out = {}
    for how in modes:
        rows = {}
        for w in weights:
            if how == "blend":
                latents = denoise(gen.renderer.denoise_fn, gen.settings, noise, [blend_encodings([a, b], [1 - w, w])],
                                  uncond, progress=False)
            else:
                latents = denoise(gen.renderer.denoise_fn, gen.settings, noise, [a, b], uncond, [1 - w, w],
                                  progress=False)
            measured = measure_images(gen.decode(latents))
            rows[str(w)] = {"other_color": rate(measured, color="blue"),
                            "concept_pattern": rate(measured, pattern="checkered"),
                            "both": rate(measured, color="blue", pattern="checkered")}
        out[how] = rows
    return out


def walk(gen, n: int, placeholder: str, cfg, source, seeds=None) -> dict:
    from finetune.evaluation.judge import load_judge
    from finetune.evaluation.metrics import clip_i
    from finetune.evaluation.stage import reference_images
    from finetune.sampling.loop import denoise
    from finetune.sampling.walk import walk_inputs

    judge = load_judge(cfg.model.judge, source.preset)
    reference = judge.embed_images(reference_images(ROOT / "finetune" / "assets" / "concepts" / "red-checkered-heart", cfg.resolution))
    a, b = gen.encode([f"a photo of {placeholder}", "a photo of shape"])
    uncond = gen.encode([""])
    per_frame = []
    gif_frames = None
    for seed in (range(n) if seeds is None else seeds):
        noise = gen.renderer.noise([seed])[0]
        contexts, noises = walk_inputs(a, b, noise, noise, 8)
        frames = gen.decode(denoise(gen.renderer.denoise_fn, gen.settings, noises, [contexts], uncond, progress=False))
        per_frame.append([clip_i(reference, judge.embed_images(f[None])) for f in frames])
        gif_frames = frames if gif_frames is None else gif_frames
    mean = np.mean(per_frame, axis=0)
    rises = np.diff(mean)
    return {"clip_i_per_frame": [round(float(x), 4) for x in mean], "largest_rise": float(max(rises.max(), 0.0)),
            "_frames": gif_frames}


def write_figure(strips: dict, results: dict, path: str) -> None:
    """One row per img2img setting of FIGURE_ROWS: the figure sample at every strength."""
    from finetune.evaluation.grid import make_grid, save_png_atomic, with_title

    images, labels = [], []
    for name in FIGURE_ROWS:
        prompt, row = strips[name]
        who = "exact denoiser" if name.endswith("exact") else "tiny UNet"
        images += row
        labels += [f"{who}, {s}: {prompt}" for s in results[name]["strengths"]]
    grid = make_grid(images, labels, ncols=len(images) // len(FIGURE_ROWS), cell_size=128)
    save_png_atomic(with_title(grid, "img2img of a green star by strength (guidance 5, 25 DDIM steps)"), path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedding", default=str(ROOT / "tests/fixtures/red-checkered-heart.safetensors"))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", default=str(ROOT / "docs/generate_quality.json"))
    parser.add_argument("--only", default="img2img,inpaint,mix,walk")
    parser.add_argument("--figure", default=str(ROOT / "docs/images/img2img-strengths.png"))
    args = parser.parse_args()
    start = time.time()
    cfg, source, gen = load(args.embedding, args.steps)
    placeholder = gen.tokenizer.placeholders and next(iter(gen.tokenizer.placeholders))
    results = {"samples": args.samples, "steps": args.steps, "guidance_scale": gen.settings.guidance_scale,
               "embedding": os.path.relpath(args.embedding, ROOT)}
    only = args.only.split(",")
    pool, strips = functools.cache(lambda: exact_pool(gen)), {}
    for name, fn in (("img2img", lambda: img2img(gen, args.samples)),
                     ("img2img_guidance_1", lambda: img2img(gen, args.samples, 1.0)),
                     ("img2img_keeping", lambda: img2img(gen, args.samples, prompt="keeping")),
                     ("img2img_exact", lambda: img2img(gen, args.samples, pool=pool())),
                     ("img2img_exact_guidance_1", lambda: img2img(gen, args.samples, 1.0, pool=pool())),
                     ("img2img_exact_keeping", lambda: img2img(gen, args.samples, prompt="keeping", pool=pool())),
                     ("inpaint", lambda: inpaint(gen, args.samples)),
                     ("mix", lambda: mix(gen, args.samples, placeholder)),
                     ("walk", lambda: walk(gen, args.samples, placeholder, cfg, source))):
        if name.split("_")[0] in only:
            t = time.time()
            full = fn()
            strips[name] = full.get("_strip")
            results[name] = {k: v for k, v in full.items() if not k.startswith("_")}
            results[name]["seconds"] = round(time.time() - t, 1)
            print(json.dumps({name: results[name]}, indent=1), flush=True)
    if all(strips.get(name) for name in FIGURE_ROWS):
        write_figure(strips, results, args.figure)
    results["seconds"] = round(time.time() - start, 1)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
