"""Counter-based random numbers in `keras.ops`: the same bits on every backend and device.

Every number a training step draws is a pure function of (seed, stream, step, index): a
32-bit integer hash of those counters (no generator state), turned into uniforms, normals
and integers. Integer arithmetic is exact on TensorFlow, JAX and NumPy alike, so both
backends draw the same posterior samples, timesteps and noise for a given seed and step,
and a resumed run draws what the uninterrupted run drew. `index` counts elements of the
global batch, so a replica that holds rows [r0, r1) draws exactly those rows' numbers.

The mixing function is "lowbias32" from Chris Wellons' hash-prospector search (constants
0x7feb352d and 0x846ca68b; public domain, github.com/skeeto/hash-prospector): good
avalanche, 2 multiplies per element. Normals are Box-Muller pairs.
"""

from __future__ import annotations

import math

from keras import ops

_M1, _M2 = 0x7FEB352D, 0x846CA68B
_GOLDEN = 0x9E3779B9  # 2^32 / phi: spreads consecutive counters before mixing
_MASK32 = 0xFFFFFFFF


def _u32(value):
    return ops.convert_to_tensor(value, "uint32")


def _mix(x):
    """lowbias32 of a uint32 tensor (elementwise)."""
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))
    x = ops.multiply(x, _u32(_M1))
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(15)))
    x = ops.multiply(x, _u32(_M2))
    return ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))


def stream_key(seed: int, stream: int, step):
    """A uint32 scalar naming the numbers of (seed, stream, step). `step` may be a tensor."""
    seed = int(seed)
    key = _mix(_u32(((seed & _MASK32) ^ (stream * _GOLDEN)) & _MASK32))
    key = _mix(ops.bitwise_xor(key, _u32((seed >> 32) & _MASK32)))
    return _mix(ops.add(key, ops.cast(step, "uint32")))


def random_bits(key, start, count: int):
    """uint32 [count]: the numbers at indices start .. start + count - 1 of `key`'s sequence."""
    index = ops.add(ops.cast(ops.arange(count, dtype="int32"), "uint32"), ops.cast(start, "uint32"))
    return _mix(ops.add(_mix(ops.bitwise_xor(index, key)), key))


def uniform(key, start, count: int):
    """float32 [count] in (0, 1]: 24 random bits each (exactly representable)."""
    bits = ops.right_shift(random_bits(key, start, count), _u32(8))
    return (ops.cast(bits, "float32") + 1.0) * (1.0 / 2**24)


def normal(key, start_row, rows: int, row_shape: tuple[int, ...]):
    """float32 [rows, *row_shape] standard normals; row i of the global draw is the same whatever `start_row`."""
    per_row = math.prod(row_shape)
    half = (per_row + 1) // 2  # Box-Muller pairs per row
    start = ops.multiply(ops.cast(start_row, "uint32"), _u32(2 * half))
    u = ops.reshape(uniform(key, start, rows * 2 * half), (rows, half, 2))
    radius = ops.sqrt(-2.0 * ops.log(u[..., 0]))
    angle = (2.0 * math.pi) * u[..., 1]
    z = ops.concatenate([radius * ops.cos(angle), radius * ops.sin(angle)], axis=-1)  # [rows, 2 * half]
    return ops.reshape(z[:, :per_row], (rows, *row_shape))


def integers(key, start_row, rows: int, high: int):
    """int32 [rows] uniform in [0, high)."""
    u = uniform(key, start_row, rows)  # (0, 1]
    return ops.minimum(ops.cast(ops.floor((1.0 - u) * high), "int32"), high - 1)
