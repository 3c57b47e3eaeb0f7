"""The generate job: check everything a user gives, build the models once, run one mode, write
images, a labelled grid and generate.json (and for a walk a GIF, an MP4 where imageio can, and a
contact sheet) to the run folder.

    generate(cfg, run_dir) -> path of the grid

Every check a user's input can fail runs before any model is built; the modes are the plain
functions of finetune.sampling (img2img, inpaint, mix, walk), which tests call without Hydra.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from finetune.backends import compiled_call
from finetune.errors import ConfigError, DataError
from finetune.generation.config import MODES

log = logging.getLogger(__name__)
IMAGE_MODES = ("img2img", "inpaint", "outpaint", "variations")


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")[:48] or "prompt"


@dataclasses.dataclass
class Output:
    """One generated image and what made it."""

    image: np.ndarray  # uint8 [H, W, 3]
    label: str
    record: dict


@dataclasses.dataclass
class Concepts:
    """The learned tokens of the embedding files, in order."""

    placeholders: list[str]
    vectors: np.ndarray | None  # float32 [sum num_vectors, D]
    records: list[dict]


def load_embeddings(paths, width: int, preset_name: str, allow_pickle: bool) -> Concepts:
    from finetune.export.formats import load_any

    placeholders, vectors, records = [], [], []
    for path in paths:
        embedding = load_any(path, allow_pickle=allow_pickle, opt_in="allow_pickle=true")
        v = np.asarray(embedding.vectors, np.float32)
        if v.ndim != 2 or v.shape[1] != width:
            raise DataError(f"embeddings: {path}: vectors of shape {list(v.shape)} do not fit the text encoder of "
                            f"preset {preset_name} (width {width}); it was learned for another model")
        if embedding.name in placeholders:
            raise ConfigError(f"embeddings: {path}: token {embedding.name!r} is already given by another file; "
                              "rename one of them (python -m finetune.export can write it under a new name)")
        placeholders.append(embedding.name)
        vectors.append(v)
        records.append({"file": str(path), "token": embedding.name, "num_vectors": int(len(v)),
                        "format": embedding.format})
    return Concepts(placeholders, np.concatenate(vectors) if vectors else None, records)


def make_tokenizer(concepts: Concepts, max_length: int):
    from finetune.tokens.tokenizer import ClipTokenizer

    tokenizer = ClipTokenizer(max_length=max_length)
    for placeholder, record in zip(concepts.placeholders, concepts.records):
        try:
            tokenizer.add_placeholder(placeholder, record["num_vectors"])
        except ConfigError as e:
            raise ConfigError(f"embeddings: {record['file']}: {e}") from e
    return tokenizer


def expand(prompt: str, concepts: Concepts) -> str:
    if "{}" not in prompt:
        return prompt
    if not concepts.placeholders:
        raise ConfigError(f"prompt {prompt!r} uses {{}} (the first embedding's token) but no embeddings are given; "
                          "add embeddings=[path/to/learned_embeds.safetensors]")
    return prompt.replace("{}", concepts.placeholders[0])


def _check_mode(g) -> None:
    if g.mode not in MODES:
        raise ConfigError(f"generate.mode={g.mode!r} must be one of {', '.join(MODES)}")
    for key in ("num_images", "frames", "fps"):
        value = getattr(g, key)
        if value < 1:
            raise ConfigError(f"generate.{key}={value} must be >= 1")
    if g.mask_feather < 0 or g.seam < 0:
        raise ConfigError("generate.mask_feather and generate.seam must be >= 0")
    if not g.prompts:
        raise ConfigError("generate.prompts is empty; give at least one prompt")
    if g.mode == "mix" and len(g.prompts) < 2:
        raise ConfigError(f"generate.mode=mix needs two or more prompts, got {len(g.prompts)}")
    if g.mode == "walk":
        if len(g.prompts) != 2:
            raise ConfigError(f"generate.mode=walk needs exactly two prompts (start, end), got {len(g.prompts)}")
        if g.frames < 2:
            raise ConfigError(f"generate.frames={g.frames} must be >= 2 for a walk")
    if g.mode in IMAGE_MODES and not g.image:
        raise ConfigError(f"generate.mode={g.mode} needs an input image: generate.image=PATH")
    if g.mode == "inpaint" and (g.mask is None) == (g.box is None):
        raise ConfigError("generate.mode=inpaint needs exactly one of generate.mask=PNG or generate.box=x0,y0,x1,y1")


def _read_inputs(g, resolution: int):
    """(input image at the model's resolution, repaint mask at that resolution or None)."""
    from finetune.data.images import load_image
    from finetune.sampling.img2img import check_strength, fit_image
    from finetune.sampling.inpaint import box_mask, mask_from_image, parse_box, resize_mask

    if g.mode not in IMAGE_MODES:
        return None, None
    check_strength(g.strength)
    original = load_image(g.image)
    mask = None
    if g.mode == "inpaint":
        h, w = original.shape[:2]
        if g.mask is not None:
            mask = mask_from_image(load_image(g.mask), original.shape, f"generate.mask={g.mask}")
        else:
            mask = box_mask(parse_box(g.box, w, h), w, h)
        mask = resize_mask(mask, resolution)
        if mask.sum() == 0:
            raise DataError("generate.mask / generate.box: the mask is empty at the model's resolution; "
                            "nothing would be repainted")
    return fit_image(original, resolution), mask


def generate(cfg, run_dir) -> Path:
    """Run `cfg.generate.mode`; write run_dir/images/*.png, grid.png, generate.json. Returns the grid's path."""
    from finetune.assembly import check_resolution, require_weights, resolve_model
    from finetune.sampling import SamplerSettings
    from finetune.sampling.prompts import check_prompts

    g = cfg.generate
    _check_mode(g)
    source = resolve_model(cfg.model)
    preset = source.preset
    check_resolution(preset, cfg.resolution, "resolution")
    settings = SamplerSettings(num_steps=g.num_steps, guidance_scale=g.guidance_scale, eta=g.eta, seed=g.seed)
    image, mask = _read_inputs(g, cfg.resolution)
    canvas = canvas_mask = None
    if g.mode == "outpaint":
        from finetune.sampling.inpaint import pad_canvas

        o = g.outpaint
        canvas, canvas_mask = pad_canvas(image, o.left, o.right, o.top, o.bottom, o.fill, g.seed)
        for side, key in ((canvas.shape[1], "left + right"), (canvas.shape[0], "top + bottom")):
            check_resolution(preset, side, f"generate.outpaint: resolution + {key} = {side}")
    concepts = load_embeddings(cfg.embeddings, preset.text_encoder.width, preset.name, cfg.allow_pickle)
    tokenizer = make_tokenizer(concepts, preset.text_encoder.max_length)
    prompts = [expand(p, concepts) for p in g.prompts]
    negative = expand(g.negative_prompt, concepts)
    check_prompts(tokenizer, prompts + [negative])
    if g.mode == "mix":
        from finetune.sampling.mix import normalized_weights

        normalized_weights(g.weights, len(prompts))
    components = ["text_encoder", "unet", "vae_decoder"] + (["vae_encoder"] if g.mode in IMAGE_MODES else [])
    require_weights(source, components)

    job = build_generator(source, concepts, tokenizer, cfg.resolution, g, settings, prompts, negative,
                          with_encoder=g.mode in IMAGE_MODES)
    run = {"txt2img": job.txt2img, "img2img": job.img2img, "variations": job.img2img, "mix": job.mix,
           "walk": job.walk}
    if g.mode == "inpaint":
        outputs, inputs = job.inpaint(image, mask), [(image, "input"), (_overlay(image, mask), "mask")]
    elif g.mode == "outpaint":
        outputs, inputs = job.outpaint(canvas, canvas_mask), [(canvas, "padded input")]
    else:
        outputs = run[g.mode](image) if g.mode in IMAGE_MODES else run[g.mode]()
        inputs = [(image, "input")] if image is not None else []
    return write_outputs(Path(run_dir), cfg, concepts, outputs, inputs)


def build_generator(source, concepts: Concepts, tokenizer, resolution: int, g, settings, prompts, negative,
                    with_encoder: bool = True) -> "Generator":
    """The models (built once) behind a Generator."""
    from finetune.assembly import build_renderer, load_component, load_text_encoder

    total = 0 if concepts.vectors is None else len(concepts.vectors)
    text_encoder = load_text_encoder(source, total, concepts.vectors, "embeddings")
    unet = load_component(source, "unet")
    renderer = build_renderer(source, tokenizer, text_encoder, unet, resolution)
    encoder = load_component(source, "vae_encoder") if with_encoder else None
    return Generator(g, settings, renderer, tokenizer, text_encoder, encoder, prompts, negative)


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask > 0] = 0.5 * out[mask > 0] + 0.5 * np.array([255, 0, 255], np.float32)
    return np.rint(out).astype(np.uint8)


class Generator:
    """The models of a generate config and one method per mode (scripts and tests call these too)."""

    def __init__(self, g, settings, renderer, tokenizer, text_encoder, encoder, prompts, negative):
        self.g, self.settings, self.renderer = g, settings, renderer
        self.tokenizer, self.text_encoder, self.encoder = tokenizer, text_encoder, encoder
        self.prompts, self.negative = prompts, negative
        self.seeds = [g.seed + i for i in range(g.num_images)]
        self._decode = compiled_call(renderer.vae_decoder)

    def encode(self, prompts) -> np.ndarray:
        from finetune.sampling.prompts import encode_weighted

        return encode_weighted(self.tokenizer, self.text_encoder, list(prompts))

    def uncond(self) -> np.ndarray:
        return self.encode([self.negative])

    def decode(self, latents) -> np.ndarray:
        from finetune.sampling.renderer import to_uint8

        return to_uint8(keras.ops.convert_to_numpy(self._decode(latents)))

    def _per_prompt(self):
        """(contexts [P * N, L, D], noise [P * N, ...], jobs [(prompt, seed)]) prompt-major."""
        jobs = [(p, s) for p in self.prompts for s in self.seeds]
        contexts = self.encode([p for p, _ in jobs])
        return contexts, self.renderer.noise([s for _, s in jobs]), jobs

    def txt2img(self) -> list[Output]:
        from finetune.sampling.loop import denoise

        contexts, noise, jobs = self._per_prompt()
        latents = denoise(self.renderer.denoise_fn, self.settings, noise, [contexts], self.uncond(), desc="txt2img")
        return [Output(img, f"{p} (seed {s})", {"prompt": p, "seed": s})
                for (p, s), img in zip(jobs, self.decode(latents))]

    def image_latents(self, image: np.ndarray) -> np.ndarray:
        from finetune.sampling.img2img import encode_latents

        return encode_latents(self.encoder, image[None])

    def img2img(self, image: np.ndarray) -> list[Output]:
        from finetune.sampling.img2img import img2img_latents

        contexts, noise, jobs = self._per_prompt()
        init = np.repeat(self.image_latents(image), len(jobs), axis=0)
        latents = img2img_latents(self.renderer.denoise_fn, self.settings, init, noise, [contexts], self.uncond(),
                                  self.g.strength)
        return [Output(img, f"{p} (seed {s}, strength {self.g.strength:g})",
                       {"prompt": p, "seed": s, "strength": self.g.strength})
                for (p, s), img in zip(jobs, self.decode(latents))]

    def _paint(self, image: np.ndarray, mask: np.ndarray, outward: bool) -> list[Output]:
        from finetune.sampling.inpaint import feather, inpaint_latents, latent_mask, paste_back

        factor = self.renderer.vae_decoder.spec.downsampling_factor
        jobs = [(p, s) for p in self.prompts for s in self.seeds]
        contexts = self.encode([p for p, _ in jobs])
        init = self.image_latents(image)
        noise = self.renderer.noise([s for _, s in jobs], init.shape[1:])
        m = latent_mask(mask, factor, self.g.mask_feather)
        latents = inpaint_latents(self.renderer.denoise_fn, self.settings, np.repeat(init, len(jobs), axis=0),
                                  noise, m, [contexts], self.uncond(), self.g.strength)
        blend = feather(mask, self.g.seam, outward=outward)
        return [Output(paste_back(img, image, blend), f"{p} (seed {s})", {"prompt": p, "seed": s,
                                                                           "strength": self.g.strength})
                for (p, s), img in zip(jobs, self.decode(latents))]

    def inpaint(self, image, mask) -> list[Output]:
        return self._paint(image, mask, outward=True)  # the seam lies outside the mask

    def outpaint(self, canvas, mask) -> list[Output]:
        return self._paint(canvas, mask, outward=False)  # the seam lies in the new area: original pixels stay

    def mix(self) -> list[Output]:
        from finetune.sampling.loop import denoise
        from finetune.sampling.mix import blend_encodings, normalized_weights

        weights = normalized_weights(self.g.weights, len(self.prompts))
        n = len(self.seeds)
        encodings = [np.repeat(self.encode([p]), n, axis=0) for p in self.prompts]
        noise = self.renderer.noise(self.seeds)
        if self.g.mix_guidance:
            latents = denoise(self.renderer.denoise_fn, self.settings, noise, encodings, self.uncond(), weights,
                              desc="mix")
        else:
            latents = denoise(self.renderer.denoise_fn, self.settings, noise, [blend_encodings(encodings, weights)],
                              self.uncond(), desc="mix")
        label = " + ".join(f"{w:.2f} {p}" for w, p in zip(weights, self.prompts))
        return [Output(img, f"{label} (seed {s})", {"prompts": self.prompts, "weights": weights, "seed": s,
                                                     "mix_guidance": self.g.mix_guidance})
                for s, img in zip(self.seeds, self.decode(latents))]

    def walk(self) -> list[Output]:
        from finetune.sampling.loop import denoise
        from finetune.sampling.walk import walk_fractions, walk_inputs

        end_seed = self.g.seed if self.g.end_seed is None else self.g.end_seed
        a, b = self.encode(self.prompts)
        noise_a, noise_b = self.renderer.noise([self.g.seed, end_seed])
        contexts, noises = walk_inputs(a, b, noise_a, noise_b, self.g.frames)
        latents = denoise(self.renderer.denoise_fn, self.settings, noises, [contexts], self.uncond(), desc="walk")
        return [Output(img, f"frame {i} (t={t:.2f})", {"frame": i, "t": float(t), "prompts": self.prompts,
                                                       "seed": self.g.seed, "end_seed": end_seed})
                for i, (t, img) in enumerate(zip(walk_fractions(self.g.frames), self.decode(latents)))]


def gif_bytes(frames: list[np.ndarray], fps: int) -> bytes:
    """An endlessly looping GIF of uint8 frames."""
    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


def write_mp4(frames: list[np.ndarray], path: Path, fps: int) -> bool:
    """An MP4 through imageio's ffmpeg plugin where it is installed; False (and a log line) otherwise."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        log.info("walk.mp4 skipped: pip install imageio imageio-ffmpeg (the video extra) to write it")
        return False
    from finetune.io import atomic_write

    tmp = path.with_name(f".{path.name}.tmp.mp4")
    imageio.mimwrite(tmp, frames, fps=fps, macro_block_size=1)
    with atomic_write(path, "video") as f:
        f.write(tmp.read_bytes())
    tmp.unlink()
    return True


def write_outputs(run_dir: Path, cfg, concepts: Concepts, outputs: list[Output], inputs) -> Path:
    from finetune.evaluation.grid import make_grid, save_png_atomic, with_title
    from finetune.io import write_bytes_atomic, write_json_atomic

    g = cfg.generate
    records = []
    for i, out in enumerate(outputs):
        name = f"images/{i:03d}-{_slug(out.record.get('prompt', g.mode))}-seed{out.record.get('seed', g.seed)}.png"
        if g.mode == "walk":
            name = f"images/frame-{i:03d}.png"
        save_png_atomic(Image.fromarray(out.image), run_dir / name)
        records.append({"file": name, **out.record})
    files = {}
    if g.mode == "walk":
        frames = [o.image for o in outputs]
        files["gif"] = str(write_bytes_atomic(run_dir / "walk.gif", gif_bytes(frames, g.fps), "GIF").name)
        if write_mp4(frames, run_dir / "walk.mp4", g.fps):
            files["mp4"] = "walk.mp4"
    cells = [(img, label) for img, label in inputs] + [(o.image, o.label) for o in outputs]
    ncols = min(len(outputs), 8) if g.mode == "walk" else max(len(inputs) + (g.num_images if g.mode != "mix" else len(outputs)), 1)
    if g.mode == "txt2img":
        ncols = g.num_images
    grid = make_grid([c[0] for c in cells], [c[1] for c in cells], ncols=ncols)
    grid = with_title(grid, f"{g.mode}: " + " | ".join(g.prompts))
    grid_path = save_png_atomic(grid, run_dir / "grid.png")
    write_json_atomic(run_dir / "generate.json", {
        "mode": g.mode, "preset": cfg.model.preset, "resolution": cfg.resolution,
        "embeddings": concepts.records, "settings": dataclasses.asdict(g), "images": records, "files": files,
    })
    return grid_path
