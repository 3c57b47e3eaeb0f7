"""The speed benchmark's JAX side (scripts/benchmark.py): the matmul peak with `jnp.dot`, FLOPs from
XLA's cost analysis of the compiled programs, the device's peak memory from `memory_stats()`.
Imports no TensorFlow: this is what runs on a GPU machine that has JAX only (docs/gpu.md)."""

from __future__ import annotations

import collections
import functools
import re

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


def profile(tuner, renderer, batch_size: int, logdir) -> dict:
    """Op profiles are TensorFlow's here (--profile); on JAX use jax.profiler with TensorBoard."""
    return {}
