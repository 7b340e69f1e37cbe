"""Neural-network building blocks made of `hlo.ops`: layer norm, softmax, linear, relu, cumulative sum.

Numerics: layer norm and softmax compute in f32 whatever the input type, and return the input type.
"""

from __future__ import annotations

from hlo import ops
from hlo.builder import Value
from hlo.types import Shape, f32


def _last_dim_broadcast(v: Value, dims) -> Value:
    return ops.broadcast_in_dim(v, dims, [len(dims) - 1])


def layer_norm(x: Value, weight: Value, bias: Value, eps: float = 1e-5, axis: int = -1) -> Value:
    """(x - mean) / sqrt(var + eps) * weight + bias over dimension `axis` (the last by default; 0 for features-first
    activations), with the biased variance, as torch."""
    dtype, dims = x.dtype, x.dims
    h = ops.convert(x, f32)
    axis = axis % x.shape.rank
    n = float(dims[axis])
    keep = [d for d in range(x.shape.rank) if d != axis]
    mean = ops.broadcast_in_dim(ops.reduce_sum(h, [axis]) / n, dims, keep)
    centered = h - mean
    var = ops.reduce_sum(centered * centered, [axis]) / n
    inv = ops.broadcast_in_dim(ops.rsqrt(var + eps), dims, keep)
    scale = ops.broadcast_in_dim(ops.convert(weight, f32), dims, [axis])
    shift = ops.broadcast_in_dim(ops.convert(bias, f32), dims, [axis])
    return ops.convert(centered * inv * scale + shift, dtype)


def softmax(x: Value, axis: int = -1) -> Value:
    """exp(x - max) / sum(exp(x - max)) along `axis`, in f32; returns f32."""
    h = ops.convert(x, f32)
    axis = axis % x.shape.rank
    keep = [d for d in range(x.shape.rank) if d != axis]
    m = ops.broadcast_in_dim(ops.reduce_max(h, [axis]), h.dims, keep)
    e = ops.exp(h - m)
    return e / ops.broadcast_in_dim(ops.reduce_sum(e, [axis]), h.dims, keep)


def linear(x: Value, weight: Value, bias: Value | None = None) -> Value:
    """x @ weight.T + bias, with weight laid out [out, in] as in torch.nn.Linear; x is [..., in]."""
    y = ops.dot_general(x, weight, ([x.shape.rank - 1], [1]))                           # [..., out]
    if bias is not None:
        y = y + _last_dim_broadcast(ops.convert(bias, y.dtype), y.dims)
    return y


def linear_columns(x: Value, weight: Value, bias: Value | None = None) -> Value:
    """weight @ x + bias for features-first activations: x [in, ...] (one example per column), weight [out, in]
    as in torch.nn.Linear -> [out, ...]. The same numbers as `linear`, transposed; see its users for why."""
    y = ops.dot_general(weight, x, ([1], [0]))                                          # [out, ...]
    if bias is not None:
        y = y + ops.broadcast_in_dim(ops.convert(bias, y.dtype), y.dims, [0])
    return y


def relu(x: Value) -> Value:
    return ops.maximum(x, 0)


def cumsum(x: Value, axis: int) -> Value:
    """Inclusive prefix sum along `axis`. Short axes: a dot with a triangular matrix (exact for integers below
    2**24). Long axes (a vocabulary): log2(n) shifted adds (Hillis-Steele), without an n x n matrix."""
    axis = axis % x.shape.rank
    n = x.dims[axis]
    if n > 512:
        return _cumsum_log_steps(x, axis)
    rows = ops.iota(Shape(x.dtype, (n, n)), 0)
    cols = ops.iota(Shape(x.dtype, (n, n)), 1)
    tri = ops.convert(ops.compare(rows, cols, "LE"), f32)                              # [n, n]: j <= i
    h = ops.convert(x, f32)
    y = ops.dot_general(h, tri, ([axis], [0]))                                         # [..., others, n]
    perm = list(range(x.shape.rank - 1))
    perm.insert(axis, x.shape.rank - 1)
    return ops.convert(ops.transpose(y, perm), x.dtype)


def _cumsum_log_steps(x: Value, axis: int) -> Value:
    n, shift = x.dims[axis], 1
    while shift < n:
        config = [(0, 0, 0)] * x.shape.rank
        config[axis] = (shift, 0, 0)
        shifted = ops.slice_in_dim(ops.pad(x, 0, config), 0, n, axis)                  # x moved right by shift
        x = x + shifted
        shift *= 2
    return x
