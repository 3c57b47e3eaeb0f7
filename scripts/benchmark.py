#!/usr/bin/env python
"""How fast one training config runs on this machine, against the machine's own matmul peak.

    python scripts/benchmark.py [train overrides ...] [--steps 5] [--warmup 2] [--keras-cv] [--out FILE.json]

Positional arguments are `python -m finetune.train` overrides (e.g. `model=sd_v1_random
data.resolution=256 trainer.batch_size=1 model.precision=mixed_bfloat16 model.frozen_dtype=bfloat16`).
One run measures, in this order:

1. the matmul peak: the median rate of large square `tf.matmul`s (float32 and bfloat16, plus
   float16 for mixed_float16), the ceiling any model here could reach;
2. training: the config's trainer (the text encoder with the learned vectors, the frozen UNet, the
   optimizer: `finetune.training.run.build_tuner`) fed cached latents (random posterior moments of
   the right shape: the VAE encoder runs once before training and is not part of a step). Median
   seconds per step after warm-up (the first step, with tracing and XLA compilation, and the other
   warm-up steps are reported apart), images/s, FLOPs per step counted from the step's graph
   (`graph_flops`), the achieved rate and its fraction of the peak of the compute dtype, and the
   peak resident memory while training (sampled every 10 ms);
3. sampling: `PromptRenderer` (the run's own renderer: cond + uncond in one UNet call per step),
   50 DDIM steps with guidance 7.5 by default, seconds per image after a 2-step warm-up;
4. with --keras-cv (sd_v1 presets only): keras-cv 0.9.0's own `StableDiffusion.generate_image`
   at the same resolution, steps and guidance, in float32 (keras-cv's default; its jit_compile as
   --keras-cv-jit says, false by default: faster on CPU), with random weights
   (`download_weights=False` components set on the `StableDiffusion` object: keras-cv's constructor
   would download weights and its tokenizer; `generate_image` itself needs neither, and the prompt
   is encoded by keras-cv's text encoder from this project's token ids);
5. with --profile: one more training step and one UNet call under the TensorFlow profiler, and the
   time per op type, to show where the time goes.

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

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GB = 1024**3
# Ops whose FLOPs `graph_flops` counts: everything else (elementwise, norms, softmax) is a small
# share of the FLOPs, though not of the time (see --profile).
MATMUL_LIKE = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum",
               "Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")
PEAK_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


# ---------------------------------------------------------------------------------------------
# Measuring tools


def matmul_peak(dtype: str, size: int, repeats: int) -> dict:
    """Median FLOP rate of `repeats` [size, size] @ [size, size] products in `dtype` (after one warm-up)."""
    a = tf.cast(tf.random.normal([size, size]), dtype)
    b = tf.cast(tf.random.normal([size, size]), dtype)
    product = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y), "float32")))
    product(a, b).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).numpy()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"size": size, "repeats": repeats, "median_s": median, "gflops": 2 * size**3 / median / 1e9}


def _dims(tensor) -> list[int]:
    dims = tensor.shape.as_list()
    if any(d is None for d in dims):
        raise ValueError(f"{tensor.name} has an unknown dimension {dims}: trace with fixed shapes")
    return dims


def op_flops(op) -> int:
    """2 x multiply-adds of one matmul-like op (0 for every other op)."""
    kind = op.type
    if kind == "MatMul":
        a, b = _dims(op.inputs[0]), _dims(op.inputs[1])
        m, k = (a[1], a[0]) if op.get_attr("transpose_a") else (a[0], a[1])
        n = b[0] if op.get_attr("transpose_b") else b[1]
        return 2 * m * n * k
    if kind.startswith("BatchMatMul"):
        a = _dims(op.inputs[0])
        k = a[-2] if op.get_attr("adj_x") else a[-1]
        return 2 * int(np.prod(_dims(op.outputs[0]))) * k
    if kind == "Einsum":
        terms = op.get_attr("equation").decode().split("->")[0].split(",")
        if len(terms) != 2 or "." in "".join(terms):
            raise ValueError(f"cannot count einsum {op.get_attr('equation')}")
        sizes = {}
        for term, tensor in zip(terms, op.inputs):
            sizes.update(zip(term, _dims(tensor)))
        return 2 * int(np.prod(list(sizes.values())))
    if kind == "Conv2D":
        kh, kw, cin, _ = _dims(op.inputs[1])
        return 2 * int(np.prod(_dims(op.outputs[0]))) * kh * kw * cin
    if kind == "Conv2DBackpropInput":  # inputs: input_sizes, filter, out_backprop
        kh, kw, cin, _ = _dims(op.inputs[1])
        return 2 * int(np.prod(_dims(op.inputs[2]))) * kh * kw * cin
    if kind == "Conv2DBackpropFilter":  # inputs: input, filter_sizes, out_backprop; output: the filter gradient
        kh, kw, cin, _ = _dims(op.outputs[0])
        return 2 * int(np.prod(_dims(op.inputs[2]))) * kh * kw * cin
    return 0


def live_ops(graph) -> list:
    """The ops that run: those the graph's outputs and stateful effects (variable updates) depend on.

    Grappler prunes the rest before execution (e.g. the weight gradients that tf.GradientTape's
    gradient functions emit for frozen kernels and nobody reads).
    """
    todo = [t.op for t in graph.outputs] + list(graph.control_outputs)
    seen = {}
    while todo:
        op = todo.pop()
        if op.name in seen:
            continue
        seen[op.name] = op
        todo.extend(t.op for t in op.inputs)
        todo.extend(op.control_inputs)
    return list(seen.values())


def graph_flops(concrete_function) -> dict:
    """FLOPs of one call, counted from its traced graph: 2 x multiply-adds of every live matmul-like op."""
    graph = concrete_function.graph
    live = live_ops(graph)
    by_type: dict[str, int] = {}
    for op in live:
        if op.type in MATMUL_LIKE:
            by_type[op.type] = by_type.get(op.type, 0) + op_flops(op)
    live_names = {op.name for op in live}
    pruned_filter_grads = sum(1 for op in graph.get_operations()
                              if op.type == "Conv2DBackpropFilter" and op.name not in live_names)
    return {
        "flops": int(sum(by_type.values())),
        "by_op_type": by_type,
        "live_ops": len(live),
        "graph_ops": len(graph.get_operations()),
        # Weight gradients of frozen convolutions: emitted by the tape, pruned, never run.
        "conv_weight_gradients_live": sum(1 for op in live if op.type == "Conv2DBackpropFilter"),
        "conv_weight_gradients_pruned": pruned_filter_grads,
        # A dense layer's kernel gradient is x^T @ dy: a MatMul with transpose_a.
        "dense_weight_gradients_live": sum(1 for op in live if op.type == "MatMul" and op.get_attr("transpose_a")),
    }


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


def op_time_profile(run, logdir: Path, top: int = 15) -> dict:
    """Run `run()` under the TensorFlow profiler; total op time per op type (all threads added up)."""
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.profiler.experimental.start(str(logdir))
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(sorted(glob.glob(str(logdir / "plugins/profile/*/*.xplane.pb")))[-1]).read_bytes())
    per_type: dict[str, float] = {}
    for plane in space.planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                kind = plane.event_metadata[event.metadata_id].display_name  # op events carry their op type here
                if kind:
                    per_type[kind] = per_type.get(kind, 0.0) + event.duration_ps * 1e-12
    total = sum(per_type.values())
    matmul_like = sum(t for k, t in per_type.items() if any(w in k for w in ("MatMul", "Conv", "Einsum")))
    ranked = sorted(per_type.items(), key=lambda kv: -kv[1])
    return {
        "wall_s": wall,
        "op_seconds_total": total,
        "matmul_conv_share": matmul_like / total if total else None,
        "top_ops": [{"op": k, "seconds": round(t, 4), "share": round(t / total, 4)} for k, t in ranked[:top]],
    }


def machine_info() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "loadavg_start": os.getloadavg()}


# ---------------------------------------------------------------------------------------------
# The three benchmarks


def build_trainer(cfg):
    """The run's trainer (finetune.training.run.build_tuner) on random cached posterior moments."""
    from finetune.assembly import make_tokenizer, resolve_model
    from finetune.training.run import build_tuner, validate

    source = resolve_model(cfg.model)
    validate(cfg, source)
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


def bench_training(cfg, tuner, num_variants: int, num_captions: int, steps: int, warmup: int, peaks: dict) -> dict:
    batch = cfg.trainer.batch_size
    rng = np.random.default_rng(1)
    n = (steps + warmup + 1) * batch
    rows = np.stack([rng.integers(0, num_variants, n), rng.integers(0, num_captions, n)], axis=1)  # VARIANT, CAPTION
    dataset = tf.data.Dataset.from_tensor_slices(rows.astype("int32")).batch(batch, drop_remainder=True).repeat()

    traces = []
    step = tuner.train_step
    tuner.train_step = lambda data: (traces.append(1), step(data))[1]  # runs once per trace, not per step
    timer = StepTimer()
    with PeakRss() as rss:
        tuner.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
    tuner.train_step = step
    measured = timer.times[warmup:]
    median = statistics.median(measured)

    spec = tf.TensorSpec([batch, 2], tf.int32)
    counted = graph_flops(tf.function(step).get_concrete_function(spec))
    unet, text_encoder = tuner.unet, tuner.text_encoder
    hw = tuner.latent_moments.shape[1]
    channels = unet.spec.latent_channels
    unet_fwd = graph_flops(tf.function(lambda x, t, c: unet(x, t, c)).get_concrete_function(
        tf.TensorSpec([batch, hw, hw, channels]), tf.TensorSpec([batch], tf.int32),
        tf.TensorSpec([batch, text_encoder.spec.max_length, text_encoder.spec.width])))["flops"]
    text_fwd = graph_flops(tf.function(lambda ids: text_encoder(ids)).get_concrete_function(
        tf.TensorSpec([batch, text_encoder.spec.max_length], tf.int32)))["flops"]
    peak_dtype = PEAK_DTYPE[cfg.model.precision]
    achieved = counted["flops"] / median
    return {
        "batch_size": batch,
        "first_step_s": timer.times[0],  # tracing + (XLA) compilation + one step
        "warmup_steps_s": timer.times[:warmup],
        "compile_s_estimate": timer.times[0] - median,
        "step_times_s": measured,
        "median_step_s": median,
        "images_per_s": batch / median,
        "step_traces": len(traces),
        "flops_per_step": counted["flops"],
        "flops_method": "graph: 2 x multiply-adds of the live MatMul/BatchMatMul/Einsum/Conv2D(+backprop) ops of the traced train_step",
        "flops_by_op_type": counted["by_op_type"],
        "unet_forward_flops": unet_fwd,
        "text_encoder_forward_flops": text_fwd,
        "step_over_forward": counted["flops"] / (unet_fwd + text_fwd),
        "weight_gradients": {k: counted[k] for k in counted if "weight_gradients" in k},
        "trainable_variables": [v.path for v in tuner.trainable_variables],
        "achieved_gflops": achieved / 1e9,
        "peak_dtype": peak_dtype,
        "fraction_of_peak": achieved / (peaks[peak_dtype]["gflops"] * 1e9),
        "peak_rss_gb": rss.gb,
    }


def bench_sampling(cfg, tuner, tokenizer, source, num_steps: int, guidance: float, images: int, peaks: dict) -> tuple[dict, object]:
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
    unet_call = graph_flops(tf.function(lambda x, t, c: tuner.unet(x, t, c)).get_concrete_function(
        tf.TensorSpec([2 * images, *latent]), tf.TensorSpec([2 * images], tf.int32), tf.TensorSpec(context)))["flops"]
    # One compiled UNet call (cond + uncond batch) alone: the rest of a sampling step is loop overhead.
    x, t, c = np.zeros((2 * images, *latent), "float32"), np.full((2 * images,), 500, "int32"), np.zeros(context, "float32")
    call_times = []
    for _ in range(3):
        start = time.perf_counter()
        np.asarray(renderer._denoise(x, t, c))
        call_times.append(time.perf_counter() - start)
    unet_call_s = statistics.median(call_times)
    decode = graph_flops(tf.function(lambda z: renderer.vae_decoder(z)).get_concrete_function(tf.TensorSpec([images, *latent])))["flops"]
    flops = num_steps * unet_call + decode
    peak_dtype = PEAK_DTYPE[cfg.model.precision]
    return {
        "num_steps": num_steps, "guidance_scale": guidance, "images": images,
        "warmup_s": warmup, "seconds": seconds, "s_per_image": seconds / images,
        "unet_traces": renderer._denoise.experimental_get_tracing_count(),
        "unet_call_s": unet_call_s,
        "loop_overhead_share": max(0.0, 1 - (num_steps * unet_call_s) / seconds),
        "flops_per_image": flops / images,
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
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--no-sampling", action="store_true")
    parser.add_argument("--keras-cv", action="store_true", help="also time keras-cv's StableDiffusion.generate_image")
    parser.add_argument("--keras-cv-jit", choices=("true", "false", "both"), default="false",
                        help="keras-cv's jit_compile: its own default is true, but on CPU its XLA-compiled UNet is "
                             "several times slower than without, so false is the fair comparison there")
    parser.add_argument("--profile", action="store_true", help="time per op type of one step and one UNet call")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    return parser.parse_args(argv)


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
        ]
    s = result.get("sampling")
    if s:
        rows += [
            ("sample: s per image", f"{s['s_per_image']:.2f} s",
             f"{s['num_steps']} DDIM steps, guidance {s['guidance_scale']}, {s['unet_traces']} UNet trace(s)"),
            ("sample: UNet call (cond+uncond)", f"{s['unet_call_s']:.3f} s",
             f"{100 * s['loop_overhead_share']:.0f}% of the sampling time outside the UNet (loop, text, decoder)"),
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

    dtypes = ["float32", "bfloat16"] + (["float16"] if m.precision == "mixed_float16" else [])
    result["matmul_peak"] = {d: matmul_peak(d, args.matmul_size, args.matmul_repeats) for d in dtypes}

    with PeakRss() as build_rss:
        tuner, tokenizer, source, num_variants, num_captions = build_trainer(cfg)
    result["build_peak_rss_gb"] = build_rss.gb
    if not args.no_training:
        result["training"] = bench_training(cfg, tuner, num_variants, num_captions, args.steps, args.warmup, result["matmul_peak"])
    renderer = None
    if not args.no_sampling:
        result["sampling"], renderer = bench_sampling(cfg, tuner, tokenizer, source, args.sample_steps, args.guidance, args.images,
                                                      result["matmul_peak"])
    if args.profile:
        import tempfile

        result["profile"] = {}
        with tempfile.TemporaryDirectory() as tmp:
            if not args.no_training:
                data = tf.data.Dataset.from_tensors(tf.zeros([cfg.trainer.batch_size, 2], tf.int32)).repeat()
                result["profile"]["train_step"] = op_time_profile(
                    lambda: tuner.fit(data, epochs=1, steps_per_epoch=1, verbose=0), Path(tmp) / "train")
            if renderer is not None:
                latent = renderer.latent_shape
                x = tf.zeros([2, *latent])
                t = tf.constant([500, 500], tf.int32)
                c = tf.zeros([2, tuner.text_encoder.spec.max_length, tuner.text_encoder.spec.width])
                result["profile"]["sampling_unet_call"] = op_time_profile(lambda: renderer._denoise(x, t, c).numpy(),
                                                                          Path(tmp) / "sample")
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
