"""Does the pretrained model draw what it is asked for? Text-to-image accuracy measured by the toy-world checker.

For every prompt "a {color} {shape}" (nameable colors and shapes), `samples_per_prompt`
images from fixed seeds (DDIM, classifier-free guidance), each measured with
`finetune.toyworld.checker.measure`: the fraction with the right color, the right shape,
and both; broken down per prompted shape and per measured size. The ceiling is the
checker's accuracy on VAE round trips of real renders (no diffusion involved).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import tensorflow as tf

from finetune.evaluation.judge import to_model_images
from finetune.sampling.renderer import PromptRenderer, to_uint8
from finetune.evaluation.scores import measure_images
from finetune.sampling import SamplerSettings
from finetune.tokens.tokenizer import ClipTokenizer
from finetune.toyworld import describe, generate, nameable_values

GATES = {"color": 0.80, "shape": 0.65, "both": 0.60}


def color_shape_prompts() -> list[tuple[str, str, str]]:
    """(prompt, color, shape) for every nameable color and shape."""
    return [(describe({"color": c, "shape": s}), c, s) for s in nameable_values("shape") for c in nameable_values("color")]


def _rates(rows: list[dict]) -> dict:
    return {
        "n": len(rows),
        "color": float(np.mean([r["color_ok"] for r in rows])) if rows else 0.0,
        "shape": float(np.mean([r["shape_ok"] for r in rows])) if rows else 0.0,
        "both": float(np.mean([r["color_ok"] and r["shape_ok"] for r in rows])) if rows else 0.0,
    }


def text_to_image_accuracy(
    preset, text_encoder, unet, vae_decoder, *, samples_per_prompt: int = 8, guidance_scale: float = 5.0,
    num_steps: int = 25, seed: int = 0, prompts: list[tuple[str, str, str]] | None = None, progress: bool = True,
) -> tuple[dict, list[dict], np.ndarray]:
    """(summary, one row per image, the images uint8 [N, H, W, 3])."""
    prompts = prompts if prompts is not None else color_shape_prompts()
    tokenizer = ClipTokenizer(max_length=preset.text_encoder.max_length, pad_id=preset.pad_id)
    renderer = PromptRenderer(tokenizer, text_encoder, unet, vae_decoder, preset.resolution)
    settings = SamplerSettings(num_steps=num_steps, guidance_scale=guidance_scale, seed=seed)
    rendered = renderer.render([p for p, _, _ in prompts], settings, samples_per_prompt, progress=progress)
    targets = {p: (c, s) for p, c, s in prompts}
    rows = []
    images = np.stack([item.image for item in rendered])
    for item, m in zip(rendered, measure_images(images)):
        color, shape = targets[item.prompt]
        rows.append({"prompt": item.prompt, "seed": item.seed, "color": color, "shape": shape,
                     "measured": m, "color_ok": m.get("color") == color, "shape_ok": m.get("shape") == shape})
    summary = _rates(rows)
    summary["checker_errors"] = sum(not r["measured"] for r in rows)  # {}: the checker gave up (counted wrong)
    by_shape, by_size = defaultdict(list), defaultdict(list)
    for r in rows:
        by_shape[r["shape"]].append(r)
        by_size[str(r["measured"].get("size"))].append(r)
    summary["per_shape"] = {k: _rates(v) for k, v in by_shape.items()}
    summary["per_measured_size"] = {k: _rates(v) for k, v in sorted(by_size.items())}
    summary["gates"] = {k: bool(summary[k] >= v) for k, v in GATES.items()}
    summary["settings"] = {"samples_per_prompt": samples_per_prompt, "guidance_scale": guidance_scale,
                           "num_steps": num_steps, "seed": seed, "prompts": len(prompts)}
    return summary, rows, images


def vae_round_trip_accuracy(vae_encoder, vae_decoder, count: int = 512, seed: int = 10_000,
                            batch_size: int = 128) -> dict:
    """The checker on decode(mean of encode(x)) of fresh renders: the ceiling of the text-to-image numbers."""
    images, _, scenes = generate(count, seed)
    scale = vae_decoder.spec.scaling_factor
    encode = tf.function(lambda x: vae_encoder(x)[0] * scale, reduce_retracing=True)
    decode = tf.function(lambda z: vae_decoder(z), reduce_retracing=True)
    decoded = np.concatenate([
        to_uint8(decode(encode(tf.constant(to_model_images(images[i : i + batch_size])))).numpy())
        for i in range(0, count, batch_size)
    ])
    rows, per_attribute = [], defaultdict(list)
    for m, scene in zip(measure_images(decoded), scenes):
        truth = scene.attributes
        for name in truth:
            if name != "seed":
                per_attribute[name].append(m.get(name) == truth[name])
        rows.append({"color_ok": m.get("color") == truth["color"], "shape_ok": m.get("shape") == truth["shape"],
                     "size": truth["size"]})
    out = _rates(rows)
    out["per_attribute"] = {k: float(np.mean(v)) for k, v in per_attribute.items()}
    out["per_size"] = {s: _rates([r for r in rows if r["size"] == s]) for s in sorted({r["size"] for r in rows})}
    return out


def format_report(t2i: dict | None, ceiling: dict | None) -> str:
    lines = []
    if t2i is not None:
        s = t2i["settings"]
        lines.append(f"text to image: {s['prompts']} prompts 'a {{color}} {{shape}}' x {s['samples_per_prompt']} samples "
                     f"(DDIM {s['num_steps']} steps, guidance {s['guidance_scale']}, seed {s['seed']})")
        gate = lambda k: "ok" if t2i["gates"][k] else f"below gate {GATES[k]:.0%}"  # noqa: E731
        lines.append(f"  color {t2i['color']:.1%} ({gate('color')})  shape {t2i['shape']:.1%} ({gate('shape')})  "
                     f"both {t2i['both']:.1%} ({gate('both')})")
        for title, table in (("per shape", t2i["per_shape"]), ("per measured size", t2i["per_measured_size"])):
            lines.append(f"  {title}:")
            for k, r in table.items():
                lines.append(f"    {k:10s} n={r['n']:4d}  color {r['color']:.1%}  shape {r['shape']:.1%}  both {r['both']:.1%}")
    if ceiling is not None:
        lines.append(f"ceiling (checker on VAE round trips of {ceiling['n']} renders): color {ceiling['color']:.1%}  "
                     f"shape {ceiling['shape']:.1%}  both {ceiling['both']:.1%}")
        lines.append("  " + "  ".join(f"{k} {v:.1%}" for k, v in ceiling["per_attribute"].items()))
        for k, r in ceiling["per_size"].items():
            lines.append(f"    {k:10s} n={r['n']:4d}  color {r['color']:.1%}  shape {r['shape']:.1%}  both {r['both']:.1%}")
    return "\n".join(lines)
