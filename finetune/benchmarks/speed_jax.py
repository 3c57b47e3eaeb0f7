"""The speed benchmark's JAX side (scripts/benchmark.py): the matmul peak with `jnp.dot`, FLOPs from
XLA's cost analysis of the compiled programs, the device's peak memory from `memory_stats()`.
Imports no TensorFlow: this is what runs on a GPU machine that has JAX only (docs/gpu.md)."""

from __future__ import annotations

import collections
import functools
import gzip
import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from finetune.benchmarks.timing import matmul_rate

LOWERED_METHOD = ("XLA cost analysis of the lowered program, before XLA's optimizations (every op as written: "
                  "matmuls, convolutions, attention and the elementwise work; a convolution counts 2 x "
                  "multiply-adds): what a GPU compiler hands to a library kernel counts too, and nothing is compiled")
COMPILED_METHOD = ("XLA cost analysis of the compiled program (this JAX analyses no lowered program on this device): "
                   "the ops XLA hands to library kernels (cuBLAS matmuls, cuDNN convolutions and attention) count 0, "
                   "so this undercounts; count on a CPU with --flops-only (docs/gpu.md)")


@functools.cache
def flops_method() -> str:
    """How this JAX and device count FLOPs: the lowered program where it can analyse one (JAX on a CPU), else
    the compiled one (JAX 0.11 on a GPU)."""
    probe = jax.jit(lambda x: x @ x).lower(jax.ShapeDtypeStruct((2, 2), jnp.float32))
    return LOWERED_METHOD if probe.cost_analysis() is not None else COMPILED_METHOD


def versions() -> dict:
    return {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
            "devices": [str(d) for d in jax.devices()]}


def matmul_peak(dtype: str, size: int, repeats: int) -> dict:
    """Median FLOP rate of `repeats` [size, size] @ [size, size] products in `dtype` (after one warm-up)."""
    keys = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(keys[0], (size, size)).astype(dtype)
    b = jax.random.normal(keys[1], (size, size)).astype(dtype)
    product = jax.jit(lambda x, y: jnp.sum(jnp.dot(x, y).astype(jnp.float32)))
    return matmul_rate(lambda: product(a, b).block_until_ready(), size, repeats)


def _flops(lowered) -> int:
    analysis = lowered.cost_analysis()
    if analysis is None:  # flops_method() says which
        analysis = lowered.compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device program
        analysis = analysis[0]
    return int(analysis.get("flops", 0))


def _values(variables):
    return [v.value for v in variables]


def step_flops(tuner, batch_size: int) -> dict:
    """FLOPs of one training step: the tuner's own train_step, compiled for a [batch, 2] batch."""
    state = (_values(tuner.trainable_variables), _values(tuner.non_trainable_variables),
             _values(tuner.optimizer.variables), _values(tuner.metrics_variables))
    data = jax.ShapeDtypeStruct((batch_size, 2), jnp.int32)
    return {"flops": _flops(jax.jit(lambda s, d: tuner.train_step(s, d)).lower(state, data))}


def call_flops(model, *specs) -> int:
    """FLOPs of one forward call of `model` on inputs of (shape, dtype) `specs`."""
    call = jax.jit(lambda tv, ntv, *args: model.stateless_call(tv, ntv, *args)[0])
    args = [jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype)) for shape, dtype in specs]
    return _flops(call.lower(_values(model.trainable_variables), _values(model.non_trainable_variables), *args))


def library_calls(compiled_call, *args) -> dict:
    """The library kernels (XLA custom calls: cuDNN attention, cuBLAS matmuls, ...) in the program that
    `compiled_call` (finetune.backends.compiled_call) runs for `args`, counted by target. JAX's compilation
    cache holds the program once it has run, so this compiles nothing more."""
    text = compiled_call.lower(*args).compile().as_text()
    targets = re.findall(r'custom_call_target="([^"]+)"', text)
    return dict(sorted(collections.Counter(targets).items()))


def device_memory() -> dict | None:
    """Peak memory of the first device (None where JAX keeps no statistics, e.g. on a CPU)."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats:
        return None
    return {"device": str(device), "peak_bytes": int(stats.get("peak_bytes_in_use", 0)),
            "bytes_limit": int(stats.get("bytes_limit", 0))}


# What a device op is, from its XLA op name (`hlo_op`) and, on a GPU, its kernel's name; first match wins.
# The names are XLA's and the libraries' (cuDNN's fused attention `fmha`/`sdpa`, its convolutions
# `fprop`/`dgrad`/`wgrad`, cuBLAS' `gemm`/`nvjet`); anything unmatched counts as "other".
OP_CATEGORIES = (
    ("attention (cuDNN fused)", r"fmha|sdpa|flash"),
    ("convolution", r"conv(?!ert)|fprop|dgrad|wgrad"),  # not "convert"
    ("matmul", r"gemm|cublas|nvjet|\bdot|matmul|ynn"),  # ynn: XLA CPU's YNNPACK fusions around a dot
    ("reduction fusion (norms, softmax, sums)", r"reduce|softmax|norm"),
    ("copy, transpose, slice", r"copy|transpose|slice|concatenate|pad|memcpy|memset"),
    ("elementwise fusion", r"fusion"),
)
LIBRARY_CATEGORIES = tuple(name for name, _ in OP_CATEGORIES[:3])  # matmul-like work: attention, convolution, matmul


def category(hlo_op: str, kernel: str = "") -> str:
    text = f"{hlo_op} {kernel}".lower()
    return next((name for name, pattern in OP_CATEGORIES if re.search(pattern, text)), "other")


def device_ops(trace: dict) -> tuple[list[dict], str]:
    """The executed device ops of a Perfetto trace (`jax.profiler.trace(..., create_perfetto_trace=True)`):
    the GPU's kernels where the trace has a GPU, else the host's XLA ops (a CPU). Each: hlo_op, kernel, start
    and duration in seconds, stream."""
    events = trace["traceEvents"]
    names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name")}
    gpu = {pid for (pid, tid), name in names.items() if tid is None and name.startswith("/device:GPU")}
    # A GPU's kernels are on its "Stream #..." lines; its other lines repeat them per XLA op or module.
    streams = {key for key, name in names.items() if key[0] in gpu and key[1] is not None and name.startswith("Stream")}
    where = "gpu" if gpu else "host"
    ops = []
    for e in events:
        if e.get("ph") != "X" or (gpu and (e["pid"], e.get("tid")) not in streams):
            continue
        args = e.get("args", {})
        if "hlo_op" not in args and not gpu:
            continue  # on the host only XLA's op events are ops (the rest is Python and runtime)
        ops.append({"hlo_op": args.get("hlo_op", e["name"]), "kernel": e["name"], "start": e["ts"] * 1e-6,
                    "seconds": e.get("dur", 0.0) * 1e-6, "stream": names.get((e["pid"], e.get("tid")))})
    return ops, where


def busy_seconds(ops: list[dict]) -> float:
    """Time during which at least one op ran (overlapping ops on several streams counted once)."""
    busy, end = 0.0, float("-inf")
    for start, stop in sorted((o["start"], o["start"] + o["seconds"]) for o in ops):
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return busy


def op_time_summary(ops: list[dict], wall: float, calls: int, top: int = 25) -> dict:
    """Op time by category, by XLA op and by kernel; the share of the wall time the device was busy."""
    total = sum(o["seconds"] for o in ops)
    by = {"category": collections.Counter(), "hlo_op": collections.Counter(), "kernel": collections.Counter()}
    for o in ops:
        by["category"][category(o["hlo_op"], o["kernel"])] += o["seconds"]
        by["hlo_op"][o["hlo_op"]] += o["seconds"]
        by["kernel"][o["kernel"]] += o["seconds"]

    def ranked(counter, n=None):
        return [{"op": k, "seconds_per_call": round(t / calls, 6), "share": round(t / total, 4) if total else None}
                for k, t in counter.most_common(n)]

    matmul_conv = sum(t for k, t in by["category"].items() if k in LIBRARY_CATEGORIES)
    return {"wall_s": wall, "calls": calls, "ops": len(ops), "streams": sorted({str(o["stream"]) for o in ops}),
            "op_seconds_total": total,
            "op_seconds_per_call": total / calls, "device_busy_share": busy_seconds(ops) / wall if wall else None,
            "matmul_conv_share": matmul_conv / total if total else None,
            "by_category": ranked(by["category"]), "top_ops": ranked(by["hlo_op"], top),
            "top_kernels": ranked(by["kernel"], top)}


def traced(run, logdir: Path, calls: int) -> dict:
    """Run `run()` (`calls` steps or calls, finished when it returns) under JAX's profiler; op_time_summary.
    The wall time is the whole of `run()`, a fit's setup and end included."""
    logdir.mkdir(parents=True, exist_ok=True)
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # Python's own calls would slow the host down and fill the trace
    with jax.profiler.trace(str(logdir), create_perfetto_trace=True, profiler_options=options):
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    trace_file = max(logdir.glob("plugins/profile/*/perfetto_trace.json.gz"))  # the newest run folder
    ops, where = device_ops(json.loads(gzip.decompress(trace_file.read_bytes())))
    return {"where": where, "trace": str(trace_file), **op_time_summary(ops, wall, calls)}


def profile(tuner, renderer, batch_size: int, logdir, steps: int = 5) -> dict:
    """Where the time goes: `steps` training steps at `batch_size` (compiled already, when the benchmark timed
    that batch size) and 3 UNet calls of the renderer (cond + uncond, random inputs) under JAX's profiler."""
    logdir = Path(logdir)
    out = {}
    if tuner is not None:
        rows = np.zeros([steps * batch_size, 2], "int32")  # (variant, caption) 0: indices into the cached latents
        out["train_step"] = traced(lambda: tuner.fit(rows, batch_size=batch_size, epochs=1, verbose=0, shuffle=False),
                                   logdir / "train", steps)
    if renderer is not None:
        noise = np.random.default_rng(2)
        context = (2, renderer.text_encoder.spec.max_length, renderer.text_encoder.spec.width)
        x, c = (noise.standard_normal(shape).astype("float32") for shape in ((2, *renderer.latent_shape), context))
        t = np.full((2,), 500, "int32")
        np.asarray(renderer._denoise(x, t, c))  # compiled before the trace
        out["sampling_unet_call"] = traced(lambda: [np.asarray(renderer._denoise(x, t, c)) for _ in range(3)],
                                           logdir / "sample", 3)
    return out
