"""The speed benchmark's TensorFlow side (scripts/benchmark.py): the matmul peak with `tf.matmul`,
FLOPs counted from traced graphs (2 x multiply-adds of the live matmul-like ops), the TensorFlow
profiler's time per op type."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from finetune.benchmarks.timing import matmul_rate

# Ops whose FLOPs `graph_flops` counts: everything else (elementwise, norms, softmax) is a small
# share of the FLOPs, though not of the time (see --profile).
MATMUL_LIKE = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum",
               "Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")
FLOPS_METHOD = "graph: 2 x multiply-adds of the live MatMul/BatchMatMul/Einsum/Conv2D(+backprop) ops of the traced function"


def flops_method() -> str:
    return FLOPS_METHOD


def versions() -> dict:
    return {"tensorflow": tf.__version__}


def matmul_peak(dtype: str, size: int, repeats: int) -> dict:
    """Median FLOP rate of `repeats` [size, size] @ [size, size] products in `dtype` (after one warm-up)."""
    a = tf.cast(tf.random.normal([size, size]), dtype)
    b = tf.cast(tf.random.normal([size, size]), dtype)
    product = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y), "float32")))
    return matmul_rate(lambda: product(a, b).numpy(), size, repeats)


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


def _spec(shape, dtype):
    return tf.TensorSpec(list(shape), dtype)


def step_flops(tuner, batch_size: int) -> dict:
    """FLOPs of one training step (the tuner's own train_step, traced for a [batch, 2] batch)."""
    counted = graph_flops(tf.function(tuner.train_step).get_concrete_function(_spec([batch_size, 2], tf.int32)))
    return {"flops": counted["flops"], "by_op_type": counted["by_op_type"],
            "weight_gradients": {k: counted[k] for k in counted if "weight_gradients" in k}}


def call_flops(model, *specs) -> int:
    """FLOPs of one forward call of `model` on inputs of (shape, dtype) `specs`."""
    return graph_flops(tf.function(lambda *args: model(*args)).get_concrete_function(*(_spec(*s) for s in specs)))["flops"]


def library_calls(compiled_call, *args) -> None:
    """JAX's question (which library kernels the compiled UNet call uses); --profile answers it here."""
    return None


def device_memory() -> dict | None:
    """Peak memory of the accelerator (None on a CPU: the benchmark reports the peak RSS)."""
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        return None
    info = tf.config.experimental.get_memory_info(gpus[0].name)
    return {"device": gpus[0].name, "peak_bytes": int(info["peak"])}


def profile(tuner, renderer, batch_size: int, logdir: Path) -> dict:
    """Time per op type of one training step and one UNet call (cond + uncond) under the profiler."""
    out = {}
    if tuner is not None:
        data = np.zeros([batch_size, 2], "int32")
        out["train_step"] = op_time_profile(lambda: tuner.fit(data, batch_size=batch_size, epochs=1, verbose=0),
                                            logdir / "train")
    if renderer is not None:
        latent = renderer.latent_shape
        x, t = tf.zeros([2, *latent]), tf.constant([500, 500], tf.int32)
        c = tf.zeros([2, tuner.text_encoder.spec.max_length, tuner.text_encoder.spec.width])
        out["sampling_unet_call"] = op_time_profile(lambda: renderer._denoise(x, t, c).numpy(), logdir / "sample")
    return out
