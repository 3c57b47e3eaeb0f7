#!/usr/bin/env python
"""How fast one training config runs on this machine, against the machine's own matmul peak.

    python scripts/benchmark.py [train overrides ...] [--steps 5] [--warmup 2] [--keras-cv] [--out FILE.json]

Positional arguments are `python -m finetune.train` overrides (e.g. `model=sd_v1_random
data.resolution=256 trainer.batch_size=1 model.precision=mixed_bfloat16 model.frozen_dtype=bfloat16`).
One run measures, in this order:

Under either Keras backend (`KERAS_BACKEND=tensorflow|jax`; the backend's measuring tools are
finetune/benchmarks/speed_tf.py and speed_jax.py, and the JAX path imports no TensorFlow, so it runs
on a GPU machine that has JAX only: docs/gpu.md).

1. the matmul peak: the median rate of large square matmuls (`tf.matmul` / `jnp.dot`; float32 and
   bfloat16, plus float16 for mixed_float16), the ceiling any model here could reach;
2. training: the config's trainer (the text encoder with the learned vectors, the frozen UNet, the
   optimizer: `finetune.training.run.build_tuner`) fed cached latents (random posterior moments of
   the right shape: the VAE encoder runs once before training and is not part of a step). Median
   seconds per step after warm-up (the first step, with tracing and XLA compilation, and the other
   warm-up steps are reported apart), images/s, FLOPs per step (TensorFlow: counted from the step's
   graph; JAX: XLA's cost analysis of the compiled step), the achieved rate and its fraction of the
   peak of the compute dtype, the peak resident memory while training (sampled every 10 ms) and, on
   a GPU under JAX, the device's peak memory;
3. sampling: `PromptRenderer` (the run's own renderer: cond + uncond in one UNet call per step),
   50 DDIM steps with guidance 7.5 by default, seconds per image after a 2-step warm-up;
4. with --keras-cv (sd_v1 presets only): keras-cv 0.9.0's own `StableDiffusion.generate_image`
   at the same resolution, steps and guidance, in float32 (keras-cv's default; its jit_compile as
   --keras-cv-jit says, false by default: faster on CPU), with random weights
   (`download_weights=False` components set on the `StableDiffusion` object: keras-cv's constructor
   would download weights and its tokenizer; `generate_image` itself needs neither, and the prompt
   is encoded by keras-cv's text encoder from this project's token ids);
5. with --profile: training steps (at the last --batch-sizes) and UNet calls under the backend's
   profiler, to show where the time goes: TensorFlow, the time per op type; JAX, the device's (the
   GPU's kernels, or a CPU's XLA ops) time per op category, XLA op and kernel, and the share of the
   wall time the device was busy (finetune/benchmarks/speed_jax.py).

It prints a table and writes everything to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import importlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from finetune.backends import name as backend_name  # noqa: E402

# The backend's own measuring tools: finetune/benchmarks/speed_tf.py or speed_jax.py (no TensorFlow).
speed = importlib.import_module({"tensorflow": "finetune.benchmarks.speed_tf",
                                 "jax": "finetune.benchmarks.speed_jax"}[backend_name()])
GB = 1024**3
PEAK_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


# ---------------------------------------------------------------------------------------------
# Measuring tools


class PeakRss:
    """Peak resident set size of this process while the `with` block runs (sampled every `interval` s)."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def gb(self) -> float:
        return self.peak / GB


def machine_info() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "backend": backend_name(), "keras": keras.__version__,
            **speed.versions(), "python": platform.python_version(), "loadavg_start": os.getloadavg()}


# ---------------------------------------------------------------------------------------------
# The three benchmarks


def build_trainer(cfg):
    """The run's trainer (finetune.training.build.build_tuner) on random cached posterior moments."""
    from finetune.assembly import check_resolution, make_tokenizer, resolve_model
    from finetune.training.build import build_tuner

    source = resolve_model(cfg.model)
    check_resolution(source.preset, cfg.data.resolution)
    preset = source.preset
    tokenizer, _ = make_tokenizer(cfg.token.placeholder, cfg.token.num_vectors, preset.text_encoder.max_length)
    captions = [t.format(cfg.token.placeholder) for t in ("a photo of a {}", "a rendering of a {}", "a close-up photo of the {}")]
    latent = cfg.data.resolution // preset.vae.downsampling_factor
    moments = np.random.default_rng(0).standard_normal((8, latent, latent, 2 * preset.vae.latent_channels)).astype("float32")
    moments[..., preset.vae.latent_channels:] = -6.0  # log-variance of a confident VAE posterior
    tuner, _ = build_tuner(cfg, source, moments, tokenizer(captions), [])
    return tuner, tokenizer, source, len(moments), len(captions)


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # the step's result exists: the step is over
        self.times.append(time.perf_counter() - self._start)


def training_flops(tuner, batch: int) -> dict:
    """FLOPs of one training step at `batch`, and of the forward calls it is made of (nothing runs)."""
    counted = speed.step_flops(tuner, batch)
    unet, text_encoder = tuner.unet, tuner.text_encoder
    hw = tuner.latent_moments.shape[1]
    length, width = text_encoder.spec.max_length, text_encoder.spec.width
    unet_fwd = speed.call_flops(unet, ([batch, hw, hw, unet.spec.latent_channels], "float32"), ([batch], "int32"),
                                ([batch, length, width], "float32"))
    text_fwd = speed.call_flops(text_encoder, ([batch, length], "int32"))
    return {"flops_per_step": counted["flops"], "flops_method": speed.flops_method(),
            "flops_by_op_type": counted.get("by_op_type"), "unet_forward_flops": unet_fwd,
            "text_encoder_forward_flops": text_fwd, "step_over_forward": counted["flops"] / (unet_fwd + text_fwd),
            "weight_gradients": counted.get("weight_gradients")}


def sampling_flops(tuner, latent: tuple, vae_decoder, num_steps: int, images: int) -> dict:
    """FLOPs of rendering `images` images: `num_steps` UNet calls on the cond + uncond batch, one decode."""
    context = (2 * images, tuner.text_encoder.spec.max_length, tuner.text_encoder.spec.width)
    unet_call = speed.call_flops(tuner.unet, ([2 * images, *latent], "float32"), ([2 * images], "int32"),
                                 (context, "float32"))
    decode = speed.call_flops(vae_decoder, ([images, *latent], "float32"))
    return {"unet_call_flops": unet_call, "decode_flops": decode, "flops_per_image": (num_steps * unet_call + decode) / images,
            "flops_method": speed.flops_method()}


def bench_training(cfg, tuner, num_variants: int, num_captions: int, steps: int, warmup: int, peaks: dict,
                   batch: int, counted: dict | None = None) -> dict:
    """Median step time at `batch`; FLOPs counted here unless `counted` (training_flops' result) is given."""
    rng = np.random.default_rng(1)
    n = (steps + warmup + 1) * batch
    rows = np.stack([rng.integers(0, num_variants, n), rng.integers(0, num_captions, n)], axis=1)  # VARIANT, CAPTION

    traces = []
    step = tuner.train_step
    tuner.train_step = lambda *args: (traces.append(1), step(*args))[1]  # runs once per trace, not per step
    timer = StepTimer()
    with PeakRss() as rss:
        tuner.fit(rows.astype("int32"), batch_size=batch, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer],
                  verbose=0, shuffle=False)
    tuner.train_step = step
    device = speed.device_memory()
    measured = timer.times[warmup:]
    median = statistics.median(measured)

    counted = counted or training_flops(tuner, batch)
    peak_dtype = PEAK_DTYPE[cfg.model.precision]
    achieved = counted["flops_per_step"] / median
    return {
        "batch_size": batch,
        "first_step_s": timer.times[0],  # tracing + (XLA) compilation + one step
        "warmup_steps_s": timer.times[:warmup],
        "compile_s_estimate": timer.times[0] - median,
        "step_times_s": measured,
        "median_step_s": median,
        "images_per_s": batch / median,
        "step_traces": len(traces),
        **counted,
        "trainable_variables": [v.path for v in tuner.trainable_variables],
        "achieved_gflops": achieved / 1e9,
        "peak_dtype": peak_dtype,
        "fraction_of_peak": achieved / (peaks[peak_dtype]["gflops"] * 1e9),
        "peak_rss_gb": rss.gb,
        "peak_device_memory_gb": device["peak_bytes"] / GB if device else None,
    }


def bench_sampling(cfg, tuner, tokenizer, source, num_steps: int, guidance: float, images: int, peaks: dict,
                   counted: dict | None = None) -> tuple[dict, object]:
    from finetune.assembly import build_renderer
    from finetune.sampling import SamplerSettings

    with PeakRss() as rss:
        renderer = build_renderer(source, tokenizer, tuner.text_encoder, tuner.unet, cfg.data.resolution)
        prompt = [f"a photo of a {cfg.token.placeholder}"]
        start = time.perf_counter()
        renderer.render(prompt, SamplerSettings(num_steps=2, guidance_scale=guidance), images, progress=False)
        warmup = time.perf_counter() - start
        start = time.perf_counter()
        renderer.render(prompt, SamplerSettings(num_steps=num_steps, guidance_scale=guidance), images, progress=False)
        seconds = time.perf_counter() - start
    latent = renderer.latent_shape
    context = (2 * images, tuner.text_encoder.spec.max_length, tuner.text_encoder.spec.width)
    # One compiled UNet call (cond + uncond batch) alone: the rest of a sampling step is loop overhead.
    noise = np.random.default_rng(2)  # random inputs, not zeros: zeros can run faster than real data
    x, c = (noise.standard_normal(shape).astype("float32") for shape in ((2 * images, *latent), context))
    t = np.full((2 * images,), 500, "int32")
    call_times = []
    for _ in range(3):
        start = time.perf_counter()
        np.asarray(renderer._denoise(x, t, c))
        call_times.append(time.perf_counter() - start)
    unet_call_s = statistics.median(call_times)
    library = speed.library_calls(renderer._denoise, x, t, c)
    counted = counted or sampling_flops(tuner, latent, renderer.vae_decoder, num_steps, images)
    flops = counted["flops_per_image"] * images
    peak_dtype = PEAK_DTYPE[cfg.model.precision]
    return {
        "num_steps": num_steps, "guidance_scale": guidance, "images": images,
        "warmup_s": warmup, "seconds": seconds, "s_per_image": seconds / images,
        "unet_traces": getattr(renderer._denoise, "experimental_get_tracing_count", lambda: None)(),
        "unet_call_s": unet_call_s,
        "unet_call_library_kernels": library,
        "loop_overhead_share": max(0.0, 1 - (num_steps * unet_call_s) / seconds),
        **counted,
        "achieved_gflops": flops / seconds / 1e9,
        "fraction_of_peak": flops / seconds / (peaks[peak_dtype]["gflops"] * 1e9),
        "peak_rss_gb": rss.gb,
    }, renderer


def bench_keras_cv(resolution: int, token_ids: np.ndarray, num_steps: int, guidance: float, jit_compile: bool) -> dict:
    from keras_cv.models import StableDiffusion
    from keras_cv.src.models.stable_diffusion.decoder import Decoder
    from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel
    from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder

    keras.config.set_dtype_policy("float32")
    model = StableDiffusion(img_height=resolution, img_width=resolution, jit_compile=jit_compile)
    # What keras-cv's lazy properties build, without their weight downloads.
    model._text_encoder = TextEncoder(77, download_weights=False)
    model._diffusion_model = DiffusionModel(resolution, resolution, 77, download_weights=False)
    model._decoder = Decoder(resolution, resolution, download_weights=False)
    if jit_compile:
        for component in (model._text_encoder, model._diffusion_model, model._decoder):
            component.compile(jit_compile=True)
    encoded = model.text_encoder.predict_on_batch({"tokens": token_ids, "positions": model._get_pos_ids()})
    start = time.perf_counter()
    model.generate_image(encoded, num_steps=2, unconditional_guidance_scale=guidance, seed=0)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    model.generate_image(encoded, num_steps=num_steps, unconditional_guidance_scale=guidance, seed=0)
    seconds = time.perf_counter() - start
    return {"jit_compile": jit_compile, "precision": "float32", "num_steps": num_steps, "guidance_scale": guidance,
            "warmup_s": warmup, "s_per_image": seconds}


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="python -m finetune.train overrides, e.g. model=sd_v1_random")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first (the first one compiles)")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--images", type=int, default=1, help="images rendered in one sampling batch")
    parser.add_argument("--batch-sizes", type=lambda text: [int(b) for b in text.split(",")], default=None,
                        help="time the step at each of these batch sizes (e.g. 1,8) with one model build; "
                             "default: trainer.batch_size")
    parser.add_argument("--flops-only", action="store_true",
                        help="count the FLOPs of the step at each batch size and of sampling, and run nothing (JAX "
                             "counts every op of the lowered program on a CPU, not on a GPU: docs/gpu.md)")
    parser.add_argument("--flops-from", type=Path, default=None,
                        help="take the FLOPs from this --flops-only JSON of the same config (counted on a CPU) "
                             "instead of counting them here: on a GPU JAX can only count compiled programs, which "
                             "undercount and cost a compile each")
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--no-sampling", action="store_true")
    parser.add_argument("--keras-cv", action="store_true", help="also time keras-cv's StableDiffusion.generate_image")
    parser.add_argument("--keras-cv-jit", choices=("true", "false", "both"), default="false",
                        help="keras-cv's jit_compile: its own default is true, but on CPU its XLA-compiled UNet is "
                             "several times slower than without, so false is the fair comparison there")
    parser.add_argument("--profile", action="store_true",
                        help="where the time goes in training steps and UNet calls: time per op type (TensorFlow), "
                             "per op category, XLA op and kernel (JAX, on the GPU where there is one)")
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="keep the profiler's files here (JAX: a Perfetto trace); default: a temporary folder")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    return parser.parse_args(argv)


def print_training(by_batch: dict) -> None:
    print("\n  batch  median step  compile+first  GFLOP/step  achieved GFLOP/s  of peak  device GB")
    for batch, t in by_batch.items():
        device = t.get("peak_device_memory_gb")
        print(f"  {batch:>5}  {1e3 * t['median_step_s']:8.1f} ms  {t['first_step_s']:10.1f} s  {t['flops_per_step'] / 1e9:10.1f}"
              f"  {t['achieved_gflops']:16.1f}  {100 * t['fraction_of_peak']:6.1f}%  "
              + (f"{device:9.2f}" if device is not None else "        -"))


def print_table(result: dict) -> None:
    rows = [(f"matmul peak {k}", f"{v['gflops']:.1f} GFLOP/s", f"{v['size']}^3, median of {v['repeats']}")
            for k, v in result["matmul_peak"].items()]
    t = result.get("training")
    if t:
        rows += [
            ("train: first step (trace+compile)", f"{t['first_step_s']:.2f} s", f"{t['step_traces']} trace(s)"),
            ("train: median step", f"{t['median_step_s']:.3f} s", f"batch {t['batch_size']}, {t['images_per_s']:.2f} images/s"),
            ("train: FLOPs per step", f"{t['flops_per_step'] / 1e9:.1f} GFLOP",
             f"{t['step_over_forward']:.2f} x (UNet {t['unet_forward_flops'] / 1e9:.1f} + text {t['text_encoder_forward_flops'] / 1e9:.1f}) fwd"),
            ("train: achieved", f"{t['achieved_gflops']:.1f} GFLOP/s", f"{100 * t['fraction_of_peak']:.1f}% of the {t['peak_dtype']} peak"),
            ("train: peak RSS", f"{t['peak_rss_gb']:.2f} GB", ""),
            *([("train: peak device memory", f"{t['peak_device_memory_gb']:.2f} GB", "memory_stats(), after the timed steps")]
              if t.get("peak_device_memory_gb") is not None else []),
        ]
    s = result.get("sampling")
    if s:
        rows += [
            ("sample: s per image", f"{s['s_per_image']:.2f} s",
             f"{s['num_steps']} DDIM steps, guidance {s['guidance_scale']}, {s['unet_traces']} UNet trace(s)"),
            ("sample: UNet call (cond+uncond)", f"{s['unet_call_s']:.3f} s",
             f"{100 * s['loop_overhead_share']:.0f}% of the sampling time outside the UNet (loop, text, decoder)"),
            *([("sample: library kernels in the UNet call", str(sum(s["unet_call_library_kernels"].values())),
                ", ".join(f"{k} x{n}" for k, n in s["unet_call_library_kernels"].items()))]
              if s.get("unet_call_library_kernels") is not None else []),
            ("sample: achieved", f"{s['achieved_gflops']:.1f} GFLOP/s", f"{100 * s['fraction_of_peak']:.1f}% of peak"),
            ("sample: peak RSS", f"{s['peak_rss_gb']:.2f} GB", ""),
        ]
    for k in result.get("keras_cv", []):
        rows.append((f"keras-cv generate_image (jit={k['jit_compile']})", f"{k['s_per_image']:.2f} s",
                     f"ours / keras-cv = {k.get('ours_over_keras_cv', float('nan')):.2f}"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{result['config']['summary']}  [load {result['machine']['loadavg_start']} -> {result['machine']['loadavg_end']}]")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>16}  {note}")
    if result.get("profile"):
        for part, prof in result["profile"].items():
            print(f"  profile {part}: {100 * (prof['matmul_conv_share'] or 0):.0f}% of op time in matmul/conv ops; top: "
                  + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in prof["top_ops"][:6]))
            if prof.get("by_category"):
                print(f"    {prof['ops'] / prof['calls']:.0f} ops per call, {1e3 * prof['op_seconds_per_call']:.1f} ms of op "
                      f"time per call, device busy {100 * prof['device_busy_share']:.0f}% of the wall time; by category: "
                      + ", ".join(f"{o['op']} {100 * o['share']:.1f}%" for o in prof["by_category"]))


def count_only(cfg, args, result: dict) -> dict:
    """--flops-only: the FLOPs the timed run would divide by, for a run timed on another machine."""
    from finetune.assembly import build_renderer

    tuner, tokenizer, source, _, _ = build_trainer(cfg)
    result["training_flops_by_batch"] = {str(b): training_flops(tuner, b) for b in args.batch_sizes or [cfg.trainer.batch_size]}
    renderer = build_renderer(source, tokenizer, tuner.text_encoder, tuner.unet, cfg.data.resolution)
    result["sampling_flops"] = sampling_flops(tuner, renderer.latent_shape, renderer.vae_decoder, args.sample_steps,
                                              args.images)
    print(f"\n{result['config']['summary']}  ({result['sampling_flops']['flops_method']})")
    for batch, t in result["training_flops_by_batch"].items():
        print(f"  train batch {batch:>3}: {t['flops_per_step'] / 1e9:10.1f} GFLOP per step ({t['step_over_forward']:.2f} x "
              f"UNet {t['unet_forward_flops'] / 1e9:.1f} + text {t['text_encoder_forward_flops'] / 1e9:.1f} GFLOP forward)")
    print(f"  sampling: {result['sampling_flops']['flops_per_image'] / 1e9:10.1f} GFLOP per image ({args.sample_steps} steps)")
    if save(result, args.out):
        print(f"wrote {args.out}")
    return result


def counted_elsewhere(args, result: dict) -> dict:
    """--flops-from: the FLOPs of a --flops-only run of this same config, by batch size and for sampling."""
    if args.flops_from is None:
        return {"training": {}, "sampling": None}
    try:
        counted = json.loads(args.flops_from.read_text())
        theirs, by_batch = counted["config"], counted["training_flops_by_batch"]
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"--flops-from {args.flops_from}: not a `benchmark.py --flops-only` JSON ({err})") from None
    ours = result["config"]
    differ = [k for k in ("preset", "resolution", "precision", "frozen_dtype", "num_vectors") if theirs.get(k) != ours[k]]
    if differ:
        what = ", ".join(f"{k} {theirs.get(k)}, here {ours[k]}" for k in differ)
        raise SystemExit(f"--flops-from {args.flops_from} counted another config ({what}): count this one with --flops-only")
    missing = [b for b in (args.batch_sizes or [result["config"]["batch_size"]]) if str(b) not in by_batch]
    if missing:
        raise SystemExit(f"--flops-from {args.flops_from} has no count for batch size(s) {missing} (it has "
                         f"{sorted(by_batch)}): count them with --flops-only --batch-sizes")
    sampling = counted.get("sampling_flops")
    if not args.no_sampling and (sampling is None or sampling["flops_per_image"] != (
            args.sample_steps * sampling["unet_call_flops"] + sampling["decode_flops"]) / args.images):
        raise SystemExit(f"--flops-from {args.flops_from} counted sampling for other steps or images: count it "
                         f"with --flops-only --sample-steps {args.sample_steps} --images {args.images}")
    result["flops_from"] = str(args.flops_from)
    return {"training": by_batch, "sampling": sampling}


def main(argv=None) -> dict:
    args = parse_args(argv)
    from finetune.config import compose_config

    result = {"machine": machine_info(), "command": " ".join(["python scripts/benchmark.py", *(argv or sys.argv[1:])])}
    cfg = compose_config("train", args.overrides)
    m = cfg.model
    summary = (f"{m.preset} {cfg.data.resolution}px batch {cfg.trainer.batch_size} {m.precision}"
               f"{' frozen ' + m.frozen_dtype if m.frozen_dtype else ''}{' xla' if m.jit_compile else ''}"
               f" num_vectors {cfg.token.num_vectors}")
    result["config"] = {"overrides": args.overrides, "summary": summary, "preset": m.preset, "resolution": cfg.data.resolution,
                        "batch_size": cfg.trainer.batch_size, "precision": m.precision, "frozen_dtype": m.frozen_dtype,
                        "jit_compile": m.jit_compile, "num_vectors": cfg.token.num_vectors, "strategy": cfg.trainer.strategy}

    if args.flops_only:
        return count_only(cfg, args, result)
    counted = counted_elsewhere(args, result)
    dtypes = ["float32", "bfloat16"] + (["float16"] if m.precision == "mixed_float16" else [])
    result["matmul_peak"] = {d: speed.matmul_peak(d, args.matmul_size, args.matmul_repeats) for d in dtypes}

    with PeakRss() as build_rss:
        tuner, tokenizer, source, num_variants, num_captions = build_trainer(cfg)
    result["build_peak_rss_gb"] = build_rss.gb
    if not args.no_training:
        batches = args.batch_sizes or [cfg.trainer.batch_size]
        for batch in batches:  # one model build, one compiled step per batch size
            measured = bench_training(cfg, tuner, num_variants, num_captions, args.steps, args.warmup,
                                      result["matmul_peak"], batch, counted["training"].get(str(batch)))
            result.setdefault("training_by_batch", {})[str(batch)] = measured
        result["training"] = result["training_by_batch"][str(batches[-1])]
        if len(batches) > 1:
            print_training(result["training_by_batch"])
    renderer = None
    if not args.no_sampling:
        result["sampling"], renderer = bench_sampling(cfg, tuner, tokenizer, source, args.sample_steps, args.guidance, args.images,
                                                      result["matmul_peak"], counted["sampling"])
    if args.profile:
        import tempfile

        batch = (args.batch_sizes or [cfg.trainer.batch_size])[-1]  # the step compiled last
        with tempfile.TemporaryDirectory() as tmp:
            result["profile"] = speed.profile(None if args.no_training else tuner, renderer, batch,
                                              args.profile_dir or Path(tmp))
    result["peak_rss_gb_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    if args.keras_cv:
        if m.preset != "sd_v1":
            raise SystemExit("--keras-cv needs an sd_v1 model (keras-cv has no other preset)")
        del tuner, renderer
        save(result, args.out)  # what is measured so far, should keras-cv fail
        ids = tokenizer(["a photo of a cat"])  # keras-cv's text encoder knows no placeholder id
        jits = {"true": [True], "false": [False], "both": [True, False]}[args.keras_cv_jit]
        ours = result.get("sampling", {}).get("s_per_image")
        result["keras_cv"] = []
        for jit in jits:
            entry = bench_keras_cv(cfg.data.resolution, ids, args.sample_steps, args.guidance, jit)
            if ours:
                entry["ours_over_keras_cv"] = ours / entry["s_per_image"]
            result["keras_cv"].append(entry)
    result["machine"]["loadavg_end"] = os.getloadavg()
    print_table(result)
    if save(result, args.out):
        print(f"wrote {args.out}")
    return result


def save(result: dict, path: Path | None) -> bool:
    if path is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))
    return True


if __name__ == "__main__":
    main()
