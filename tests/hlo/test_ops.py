"""Every op of hlo.ops, built, compiled by XLA CPU and run, against numpy."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import hlo
from hlo import bf16, f16, f32, pred, s32, u32

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float32), BF16, np.dtype(np.float16)]
NUMERIC = FLOATS + [np.dtype(np.int32)]


def ids(dtypes):
    return [np.dtype(d).name for d in dtypes]


def ref(fn, *arrays, dtype):
    """numpy reference computed in float64 (float inputs) and cast to `dtype`, as XLA rounds the result."""
    wide = [a.astype(np.float64) if a.dtype.kind in "fV" else a for a in arrays]
    return np.asarray(fn(*wide)).astype(dtype)


def sample(rng, shape, dtype, low=-4, high=4):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(low, high, size=shape).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(np.float32).astype(dtype)


# ----------------------------------------------------------------------------------------------------------- types

def test_dtype_of_names_dtypes_and_arrays():
    assert hlo.dtype_of("f32") is f32
    assert hlo.dtype_of(np.dtype(np.int32)) is s32
    assert hlo.dtype_of(np.zeros(2, BF16)) is bf16
    assert hlo.dtype_of(np.float16(1)) is f16
    assert hlo.dtype_of(np.zeros(2, bool)) is pred
    assert all(d.numpy == np.dtype(d.numpy) and hlo.dtype_of(d.numpy) is d for d in hlo.DTYPES.values())


def test_dtype_of_numpy_scalar_type():
    assert hlo.dtype_of(np.float32) is f32


def test_shapes():
    assert f32[2, 3] == hlo.Shape(f32, (2, 3)) == f32(2, 3)
    assert s32[()].rank == 0 and s32[()].size == 1 and str(s32[()]) == "s32[]"
    assert str(bf16[4, 1]) == "bf16[4,1]" and bf16[4, 1].nbytes == 8 and bf16[4, 1].size == 4
    assert f32[3].with_dtype(pred) == pred[3]


# ------------------------------------------------------------------------------------------------------- constants

@pytest.mark.parametrize("name", list(hlo.DTYPES))
def test_constant_every_dtype(run, check, name):
    dtype = hlo.DTYPES[name]
    array = np.array([[1, 0, 3], [2, 5, 1]]).astype(dtype.numpy)
    out = run(lambda p: [hlo.constant(array), hlo.constant(1, dtype), hlo.constant(array[:1, 1:], dtype)])
    check(out[0], array)
    check(out[1], np.array(1).astype(dtype.numpy))
    check(out[2], array[:1, 1:])


def test_constant_default_dtypes(run, check):
    out = run(lambda p: [hlo.constant(True), hlo.constant(7), hlo.constant(2.5), hlo.constant(np.float16(1.5)),
                         hlo.constant(np.arange(3, dtype=np.int64))])
    check(out[0], np.bool_(True))
    check(out[1], np.int32(7))
    check(out[2], np.float32(2.5))
    check(out[3], np.float16(1.5))
    check(out[4], np.arange(3, dtype=np.int64))


def test_constant_fractional_bf16_and_f16(run, check):
    values = np.array([0.1, -3.75, 1e-3, 65504.0], np.float32)
    out = run(lambda p: [hlo.constant(values, bf16), hlo.constant(values, f16)])
    check(out[0], values.astype(BF16), rtol=0)
    check(out[1], values.astype(np.float16), rtol=0)


@pytest.mark.parametrize("value, shape, want", [
    (1.5, f32[2, 3], np.full((2, 3), 1.5, np.float32)),
    (7, s32[()], np.int32(7)),
    (True, pred[4], np.ones(4, bool)),
    (-2.0, bf16[1, 3], np.full((1, 3), -2.0, BF16)),
    (3, f16[1], np.full(1, 3, np.float16)),
])
def test_full(run, check, value, shape, want):
    check(run(lambda p: hlo.full(value, shape)), want)


@pytest.mark.parametrize("shape, dim, want", [
    (f32[2, 3], 0, np.broadcast_to(np.arange(2, dtype=np.float32)[:, None], (2, 3))),
    (f32[2, 3], 1, np.broadcast_to(np.arange(3, dtype=np.float32), (2, 3))),
    (s32[2, 3], -1, np.broadcast_to(np.arange(3, dtype=np.int32), (2, 3))),
    (s32[5], 0, np.arange(5, dtype=np.int32)),
    (bf16[1, 4], 1, np.arange(4).astype(BF16)[None]),
    (u32[3, 1], 0, np.arange(3, dtype=np.uint32)[:, None]),
])
def test_iota(run, check, shape, dim, want):
    check(run(lambda p: hlo.iota(shape, dim)), want)


# ----------------------------------------------------------------------------------------------------- elementwise

def _trunc_div(a, b):
    q = np.abs(a) // np.abs(b)
    return (np.sign(a) * np.sign(b) * q).astype(a.dtype)


BINARY = {
    "add": (hlo.add, np.add),
    "subtract": (hlo.subtract, np.subtract),
    "multiply": (hlo.multiply, np.multiply),
    "divide": (hlo.divide, None),
    "maximum": (hlo.maximum, np.maximum),
    "minimum": (hlo.minimum, np.minimum),
    "power": (hlo.power, None),
    "remainder": (hlo.remainder, np.fmod),
}


@pytest.mark.parametrize("dtype", NUMERIC, ids=ids(NUMERIC))
@pytest.mark.parametrize("op", list(BINARY))
def test_binary(run, check, rng, op, dtype):
    fn, np_fn = BINARY[op]
    a = sample(rng, (2, 3), dtype)
    b = sample(rng, (2, 3), dtype)
    if op in ("divide", "remainder"):
        b = np.where(np.abs(b.astype(np.float32)) < 0.5, 3, b).astype(dtype)  # no division by (near) zero
    if op == "power":
        a = sample(rng, (2, 3), dtype, 1, 4)
        b = sample(rng, (2, 3), dtype, 0, 3)
    got = run(lambda p: fn(p.a, p.b), a=a, b=b)
    if dtype.kind == "i":
        want = {"divide": _trunc_div, "power": lambda x, y: x ** y}.get(op, np_fn)(a, b).astype(dtype)
    else:
        want = ref({"divide": np.divide, "power": np.power}.get(op, np_fn), a, b, dtype=dtype)
    check(got, want)


def test_integer_division_and_remainder_round_toward_zero(run, check):
    a = np.array([7, -7, 7, -7, 0, 1], np.int32)
    b = np.array([2, 2, -2, -2, 3, 5], np.int32)
    out = run(lambda p: [hlo.divide(p.a, p.b), hlo.remainder(p.a, p.b)], a=a, b=b)
    check(out[0], np.array([3, -3, -3, 3, 0, 0], np.int32))
    check(out[1], np.array([1, -1, 1, -1, 0, 1], np.int32))


def test_binary_broadcasts_python_numbers_and_rank0_values(run, check):
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    s = np.float32(0.5)
    out = run(lambda p: [p.x + 1, 2.0 - p.x, p.x * p.s, p.s / p.x, hlo.maximum(p.s, p.x), -p.x, 3 * p.x,
                         p.s + p.s], x=x, s=s)
    check(out[0], x + 1)
    check(out[1], 2 - x)
    check(out[2], x * s)
    check(out[3], s / x)
    check(out[4], np.maximum(s, x))
    check(out[5], -x)
    check(out[6], 3 * x)
    check(out[7], np.float32(1.0))


def test_binary_python_number_takes_the_value_dtype(run, check):
    x = np.array([1, 2, 3], np.int32)
    got = run(lambda p: p.x * 3 + 1, x=x)
    check(got, x * 3 + 1)


@pytest.mark.parametrize("dtype", [np.bool_, np.int32], ids=["pred", "s32"])
def test_and_or_not(run, check, rng, dtype):
    a = sample(rng, (3, 4), dtype, -8, 8)
    b = sample(rng, (3, 4), dtype, -8, 8)
    out = run(lambda p: [hlo.and_(p.a, p.b), hlo.or_(p.a, p.b), hlo.not_(p.a)], a=a, b=b)
    check(out[0], a & b)
    check(out[1], a | b)
    check(out[2], ~a)


UNARY = {
    "exp": (hlo.exp, np.exp, (-3, 3)),
    "log": (hlo.log, np.log, (0.1, 8)),
    "rsqrt": (hlo.rsqrt, lambda x: 1 / np.sqrt(x), (0.1, 8)),
    "sqrt": (hlo.sqrt, np.sqrt, (0, 8)),
    "tanh": (hlo.tanh, np.tanh, (-3, 3)),
    "sine": (hlo.sine, np.sin, (-3, 3)),
    "cosine": (hlo.cosine, np.cos, (-3, 3)),
    "floor": (hlo.floor, np.floor, (-3, 3)),
    "negate": (hlo.negate, np.negative, (-3, 3)),
    "abs": (hlo.abs, np.abs, (-3, 3)),
}


@pytest.mark.parametrize("dtype", FLOATS, ids=ids(FLOATS))
@pytest.mark.parametrize("op", list(UNARY))
def test_unary_float(run, check, rng, op, dtype):
    fn, np_fn, (low, high) = UNARY[op]
    x = sample(rng, (2, 3), dtype, low, high)
    check(run(lambda p: fn(p.x), x=x), ref(np_fn, x, dtype=dtype), atol=1e-2 if dtype != np.float32 else 1e-5)


def test_unary_edge_shapes(run, check):
    s = np.float32(4.0)
    one = np.full((1, 1), 0.25, np.float32)
    out = run(lambda p: [hlo.sqrt(p.s), hlo.rsqrt(p.one), hlo.exp(p.s), hlo.log(p.one)], s=s, one=one)
    check(out[0], np.float32(2.0))
    check(out[1], np.full((1, 1), 2.0, np.float32))
    check(out[2], np.exp(s))
    check(out[3], np.log(one))


def test_negate_abs_integers(run, check):
    x = np.array([[-3, 0, 5], [2147483647, -2147483647, 1]], np.int32)
    out = run(lambda p: [hlo.negate(p.x), hlo.abs(p.x)], x=x)
    check(out[0], -x)
    check(out[1], np.abs(x))


DIRECTIONS = {"EQ": np.equal, "NE": np.not_equal, "LT": np.less, "LE": np.less_equal, "GT": np.greater,
              "GE": np.greater_equal}


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BF16, np.dtype(np.int32), np.dtype(np.uint32)],
                         ids=["f32", "bf16", "s32", "u32"])
def test_compare_all_directions(run, check, dtype):
    a = np.array([[0, 1, 2], [3, 2, 1]]).astype(dtype)
    b = np.array([[0, 2, 1], [3, 3, 0]]).astype(dtype)
    out = run(lambda p: [hlo.compare(p.a, p.b, d) for d in DIRECTIONS], a=a, b=b)
    for got, np_fn in zip(out, DIRECTIONS.values()):
        check(got, np_fn(a.astype(np.float64), b.astype(np.float64)))


def test_compare_scalar_operand_lowercase_direction_and_pred(run, check):
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    a = np.array([True, False, True])
    b = np.array([True, True, False])
    out = run(lambda p: [hlo.compare(p.x, 0.0, "gt"), hlo.compare(1, p.i, "LE"), hlo.compare(p.a, p.b, "EQ")],
              x=x, i=np.int32(1), a=a, b=b)
    check(out[0], x > 0)
    check(out[1], np.bool_(True))
    check(out[2], a == b)


@pytest.mark.parametrize("dtype", [np.float32, BF16, np.int32, np.bool_], ids=["f32", "bf16", "s32", "pred"])
def test_select_elementwise(run, check, rng, dtype):
    c = rng.random((3, 2)) < 0.5
    a = sample(rng, (3, 2), dtype)
    b = sample(rng, (3, 2), dtype)
    check(run(lambda p: hlo.select(p.c, p.a, p.b), c=c, a=a, b=b), np.where(c, a, b))


@pytest.mark.parametrize("flag", [True, False])
def test_select_scalar_predicate_chooses_whole_arrays(run, check, flag):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = -a
    out = run(lambda p: [hlo.select(p.c, p.a, p.b), hlo.select(p.c, p.a, 100.0)], c=np.bool_(flag), a=a, b=b)
    check(out[0], a if flag else b)
    check(out[1], a if flag else np.full_like(a, 100.0))


@pytest.mark.parametrize("src, dst", [
    (np.float32, np.int32), (np.int32, np.float32), (np.float32, BF16), (BF16, np.float32), (np.float32, np.float16),
    (np.bool_, np.int32), (np.int32, np.bool_), (np.float32, np.bool_), (np.int32, np.int8), (np.float16, BF16),
])
def test_convert(run, check, src, dst):
    x = np.array([[-2.75, -0.5, 0.0], [0.3, 1.5, 100.9]]).astype(src)
    got = run(lambda p: hlo.convert(p.x, hlo.dtype_of(np.dtype(dst))), x=x)
    # floats to integers round toward zero (numpy's astype does the same); to pred: nonzero is true
    want = x.astype(np.float32).astype(dst) if src == BF16 else x.astype(dst)
    check(got, want, rtol=0)


def test_convert_by_name_and_to_same_dtype(run, check):
    x = np.array([1.5, -1.5], np.float32)
    out = run(lambda p: [hlo.convert(p.x, "s32"), hlo.convert(p.x, "f32")], x=x)
    check(out[0], np.array([1, -1], np.int32))
    check(out[1], x)


# ---------------------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("src, dims, want", [
    ((2, 3), [3, 2], (3, 2)),
    ((2, 3), [-1], (6,)),
    ((2, 3, 4), [2, -1, 1], (2, 12, 1)),
    ((1, 1), [], ()),
    ((), [1, 1, 1], (1, 1, 1)),
    ((), [-1], (1,)),
    ((4, 1), [1, 4], (1, 4)),
    ((2, 3), (2, 3), (2, 3)),
])
def test_reshape(run, check, src, dims, want):
    x = np.arange(int(np.prod(src)), dtype=np.float32).reshape(src)
    got = run(lambda p: hlo.reshape(p.x, dims), x=x)
    check(got, x.reshape(want))


@pytest.mark.parametrize("perm", [[1, 0, 2], [2, 0, 1], [0, 2, 1], [0, 1, 2]])
def test_transpose(run, check, perm):
    x = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    check(run(lambda p: hlo.transpose(p.x, perm), x=x), np.transpose(x, perm))


def test_transpose_size1_and_bf16(run, check):
    x = np.arange(3).astype(BF16).reshape(1, 3)
    check(run(lambda p: hlo.transpose(p.x, [1, 0]), x=x), x.T)


@pytest.mark.parametrize("src, dims, bdims, np_view", [
    ((3,), (2, 3), [1], lambda x: x[None, :]),
    ((2,), (2, 3), [0], lambda x: x[:, None]),
    ((), (2, 2), [], lambda x: x),
    ((2, 3), (2, 4, 3), [0, 2], lambda x: x[:, None, :]),
    ((1, 3), (1, 3), [0, 1], lambda x: x),
    ((2,), (2, 1, 5), [0], lambda x: x[:, None, None]),
])
def test_broadcast_in_dim(run, check, src, dims, bdims, np_view):
    x = np.arange(1, int(np.prod(src)) + 1, dtype=np.float32).reshape(src)
    got = run(lambda p: hlo.broadcast_in_dim(p.x, dims, bdims), x=x)
    check(got, np.broadcast_to(np_view(x), dims))


@pytest.mark.parametrize("src, dims", [
    ((3,), (2, 3)), ((1, 3), (4, 3)), ((2, 1), (2, 5)), ((), (3,)), ((1,), (2, 1)), ((1, 1), (1, 1)),
    ((2, 1, 3), (4, 2, 5, 3)),
])
def test_broadcast(run, check, src, dims):
    x = np.arange(1, int(np.prod(src)) + 1, dtype=np.int32).reshape(src)
    check(run(lambda p: hlo.broadcast(p.x, dims), x=x), np.broadcast_to(x, dims))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_concatenate(run, check, dim):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(6, 12, dtype=np.float32).reshape(2, 3)
    c = np.arange(12, 18, dtype=np.float32).reshape(2, 3)
    check(run(lambda p: hlo.concatenate([p.a, p.b, p.c], dim), a=a, b=b, c=c), np.concatenate([a, b, c], dim))


def test_concatenate_size1_and_single_operand(run, check):
    a = np.array([[1]], np.int32)
    b = np.array([[2, 3]], np.int32)
    out = run(lambda p: [hlo.concatenate([p.a, p.b], 1), hlo.concatenate([p.b], 0),
                         hlo.concatenate([p.a, p.a, p.a], 0)], a=a, b=b)
    check(out[0], np.array([[1, 2, 3]], np.int32))
    check(out[1], b)
    check(out[2], np.ones((3, 1), np.int32))


@pytest.mark.parametrize("start, limit, strides", [
    ([0, 1], [2, 4], None),
    ([1, 0], [3, 5], [1, 2]),
    ([0, 0], [3, 5], [2, 3]),
    ([2, 4], [3, 5], [1, 1]),
    ([0, 3], [3, 3], None),
])
def test_slice(run, check, start, limit, strides):
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    st = strides or [1, 1]
    want = x[start[0]:limit[0]:st[0], start[1]:limit[1]:st[1]]
    check(run(lambda p: hlo.slice(p.x, start, limit, strides), x=x), want)


@pytest.mark.parametrize("start, limit, dim", [(1, 2, 0), (0, 1, 1), (2, 4, -1), (0, 2, 0), (1, 3, 1)])
def test_slice_in_dim(run, check, start, limit, dim):
    x = np.arange(8, dtype=np.int32).reshape(2, 4)
    want = np.take(x, np.arange(start, limit), axis=dim)
    check(run(lambda p: hlo.slice_in_dim(p.x, start, limit, dim), x=x), want)


def _clamp(start, size, dim):
    return min(max(start, 0), dim - size)


@pytest.mark.parametrize("i, j", [(0, 0), (1, 2), (2, 3), (5, -4), (-1, 9)])
def test_dynamic_slice_runtime_starts(run, check, i, j):
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    got = run(lambda p: hlo.dynamic_slice(p.x, [p.i, p.j], [2, 2]), x=x, i=np.int32(i), j=np.int32(j))
    ci, cj = _clamp(i, 2, 4), _clamp(j, 2, 5)  # XLA clamps the start so that the slice fits
    check(got, x[ci:ci + 2, cj:cj + 2])


def test_dynamic_slice_mixed_python_and_value_starts(run, check):
    x = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    got = run(lambda p: hlo.dynamic_slice(p.x, [1, p.j, 0], [1, 2, 4]), x=x, j=np.int32(1))
    check(got, x[1:2, 1:3, :])


def test_dynamic_slice_mixed_index_dtypes(run, check):
    x = np.arange(20, dtype=np.float32).reshape(2, 10)
    out = run(lambda p: [hlo.dynamic_slice(p.x, [p.i, p.u], [1, 3]), hlo.dynamic_slice(p.x, [p.i, p.u8], [2, 1]),
                         hlo.dynamic_slice(p.x, [hlo.constant(1, hlo.s64), p.i], [1, 1])],
              x=x, i=np.int32(1), u=np.uint32(9), u8=np.uint8(4))
    check(out[0], x[1:2, 7:10])
    check(out[1], x[0:2, 4:5])
    check(out[2], x[1:2, 1:2])


@pytest.mark.parametrize("i, j", [(0, 0), (1, 2), (3, 4), (-2, 1)])
def test_dynamic_update_slice_runtime_starts(run, check, i, j):
    x = np.zeros((4, 5), np.float32)
    u = np.arange(1, 5, dtype=np.float32).reshape(2, 2)
    got = run(lambda p: hlo.dynamic_update_slice(p.x, p.u, [p.i, p.j]), x=x, u=u, i=np.int32(i), j=np.int32(j))
    ci, cj = _clamp(i, 2, 4), _clamp(j, 2, 5)
    want = x.copy()
    want[ci:ci + 2, cj:cj + 2] = u
    check(got, want)


def test_dynamic_update_slice_full_and_bf16(run, check):
    x = np.zeros((2, 3), BF16)
    u = np.ones((2, 3), BF16)
    check(run(lambda p: hlo.dynamic_update_slice(p.x, p.u, [0, 0]), x=x, u=u), u)


def _np_pad(x, value, config):
    out = x
    for d, (lo, hi, interior) in enumerate(config):
        n = out.shape[d]
        size = n + max(n - 1, 0) * interior
        shape = list(out.shape)
        shape[d] = size
        spread = np.full(shape, value, out.dtype)
        index = [np.s_[:]] * out.ndim
        index[d] = np.s_[::interior + 1]
        spread[tuple(index)] = out
        widths = [(0, 0)] * out.ndim
        widths[d] = (max(lo, 0), max(hi, 0))
        spread = np.pad(spread, widths, constant_values=value)
        index = [np.s_[:]] * out.ndim
        index[d] = np.s_[max(-lo, 0): spread.shape[d] - max(-hi, 0)]
        out = spread[tuple(index)]
    return out


@pytest.mark.parametrize("config", [
    [(1, 2, 0), (0, 0, 0)],
    [(0, 0, 1), (2, 1, 2)],
    [(-1, 1, 0), (1, -2, 1)],
    [(0, 0, 0), (0, 0, 0)],
])
def test_pad(run, check, config):
    x = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    got = run(lambda p: hlo.pad(p.x, -9.0, config), x=x)
    check(got, _np_pad(x, np.float32(-9), config))


def test_pad_runtime_padding_value_and_size1(run, check):
    x = np.array([[5]], np.int32)
    got = run(lambda p: hlo.pad(p.x, p.v, [(1, 1, 3), (0, 2, 5)]), x=x, v=np.int32(7))
    check(got, _np_pad(x, np.int32(7), [(1, 1, 3), (0, 2, 5)]))


# ---------------------------------------------------------------------------------------------------------- gather

@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("idx_shape", [(3,), (2, 2)])
def test_take(run, check, rng, axis, idx_shape):
    x = np.arange(24, dtype=np.float32).reshape(3, 4, 2)
    idx = rng.integers(0, x.shape[axis], size=idx_shape).astype(np.int32)
    check(run(lambda p: hlo.take(p.x, p.i, axis), x=x, i=idx), np.take(x, idx, axis=axis))


def test_take_2d_operand_axis1_and_clamping(run, check):
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    idx = np.array([[3, -1], [7, 0]], np.int32)  # out of range: clamped, like numpy's mode="clip"
    out = run(lambda p: [hlo.take(p.x, p.i, 1), hlo.take(p.x, p.i, 0)], x=x, i=idx)
    check(out[0], np.take(x, idx, axis=1, mode="clip"))
    check(out[1], np.take(x, idx, axis=0, mode="clip"))


def test_take_scalar_index_and_bf16(run, check):
    x = np.arange(6).astype(BF16).reshape(3, 2)
    check(run(lambda p: hlo.take(p.x, p.i, 0), x=x, i=np.int32(2)), x[2])


def test_gather_points_and_windows(run, check):
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    idx = np.array([[0, 1], [3, 4], [2, 0]], np.int32)
    out = run(lambda p: [
        hlo.gather(p.x, p.i, offset_dims=[], collapsed_slice_dims=[0, 1], start_index_map=[0, 1],
                   index_vector_dim=1, slice_sizes=[1, 1]),
        hlo.gather(p.x, p.i, offset_dims=[1], collapsed_slice_dims=[0], start_index_map=[0, 1],
                   index_vector_dim=1, slice_sizes=[1, 2]),
    ], x=x, i=idx)
    check(out[0], x[idx[:, 0], idx[:, 1]])
    want = np.stack([x[r, min(c, 3):min(c, 3) + 2] for r, c in idx])  # window start clamped to fit
    check(out[1], want)


# ------------------------------------------------------------------------------------------------------------- dot

def test_dot_general_batch_and_contracting(run, check, rng):
    a = sample(rng, (2, 3, 4), np.float32)
    b = sample(rng, (2, 4, 5), np.float32)
    got = run(lambda p: hlo.dot_general(p.a, p.b, ([2], [1]), ([0], [0])), a=a, b=b)
    check(got, np.einsum("bmk,bkn->bmn", a, b), rtol=1e-5, atol=1e-4)


def test_dot_general_nonstandard_dims(run, check, rng):
    a = sample(rng, (4, 3), np.float32)   # [k, m]
    b = sample(rng, (5, 4), np.float32)   # [n, k]
    c = sample(rng, (3, 2, 4), np.float32)  # [k2, b, m2]
    d = sample(rng, (4, 3, 2), np.float32)  # [m2, k2, b]
    out = run(lambda p: [hlo.dot_general(p.a, p.b, ([0], [1])),
                         hlo.dot_general(p.c, p.d, ([0, 2], [1, 0])),
                         hlo.dot_general(p.c, p.d, ([0], [1]), ([1], [2]))], a=a, b=b, c=c, d=d)
    check(out[0], np.einsum("km,nk->mn", a, b), atol=1e-4)
    check(out[1], np.einsum("kbm,mkc->bc", c, d), atol=1e-4)
    # result: batch dims, then lhs free, then rhs free
    check(out[2], np.einsum("kbm,nkb->bmn", c, d), atol=1e-4)


def test_dot_general_bf16_with_f32_result_and_integers(run, check, rng):
    a = sample(rng, (2, 8), BF16)
    b = sample(rng, (8, 3), BF16)
    i = sample(rng, (2, 3), np.int32)
    j = sample(rng, (3, 2), np.int32)
    out = run(lambda p: [hlo.dot(p.a, p.b, preferred_element_type=f32), hlo.dot(p.i, p.j)], a=a, b=b, i=i, j=j)
    check(out[0], a.astype(np.float32) @ b.astype(np.float32), atol=1e-4)
    check(out[1], i @ j)


@pytest.mark.parametrize("sa, sb", [((2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)), ((1, 1), (1, 1)),
                                    ((2, 2, 3), (3, 2))])
def test_dot(run, check, rng, sa, sb):
    a = sample(rng, sa, np.float32)
    b = sample(rng, sb, np.float32)
    check(run(lambda p: hlo.dot(p.a, p.b), a=a, b=b), np.tensordot(a, b, axes=([a.ndim - 1], [0])), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------- reduce

@pytest.mark.parametrize("dtype", [np.float32, BF16, np.int32], ids=["f32", "bf16", "s32"])
@pytest.mark.parametrize("dims", [[0], [1], [0, 2], [-1], [0, 1, 2]])
def test_reduce_sum_and_max(run, check, rng, dtype, dims):
    x = sample(rng, (2, 3, 4), dtype, -3, 3)
    if dtype == BF16:
        x = np.round(x.astype(np.float32)).astype(BF16)  # integer-valued: the sum is exact in any order
    out = run(lambda p: [hlo.reduce_sum(p.x, dims), hlo.reduce_max(p.x, dims), hlo.reduce(p.x, 1, dims, "min"),
                         hlo.reduce(p.x, 0, dims, "add")], x=x)
    axes = tuple(d % 3 for d in dims)
    wide = x.astype(np.float64) if dtype != np.int32 else x
    check(out[0], wide.sum(axis=axes).astype(dtype))
    check(out[1], x.max(axis=axes))
    check(out[2], np.minimum(wide.min(axis=axes), 1).astype(dtype))
    check(out[3], out[0])


def test_reduce_init_value_and_multiply(run, check):
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    out = run(lambda p: [hlo.reduce(p.x, 10.0, [1], "add"), hlo.reduce(p.x, 2.0, [0], "multiply"),
                         hlo.reduce(p.x, 100.0, [0, 1], "max")], x=x)
    check(out[0], np.array([16.0, 25.0], np.float32))
    check(out[1], np.array([8.0, 20.0, 36.0], np.float32))
    check(out[2], np.float32(100.0))


def test_reduce_custom_function(run, check, rng):
    x = sample(rng, (3, 5), np.float32)

    def max_abs(a, b):
        return hlo.maximum(hlo.abs(a), hlo.abs(b))

    out = run(lambda p: [hlo.reduce(p.x, 0.0, [1], max_abs), hlo.reduce(p.x, 0.0, [0], max_abs)], x=x)
    check(out[0], np.abs(x).max(axis=1))
    check(out[1], np.abs(x).max(axis=0))


def test_reduce_pred_and_or(run, check):
    x = np.array([[True, False, True], [True, True, True]])
    out = run(lambda p: [hlo.reduce(p.x, True, [1], "and"), hlo.reduce(p.x, False, [0], "or")], x=x)
    check(out[0], x.all(axis=1))
    check(out[1], x.any(axis=0))


def test_two_custom_reducers_in_one_program(run, check):
    x = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]], np.float32)
    out = run(lambda p: [hlo.reduce(p.x, 0.0, [1], lambda a, b: a + b),
                         hlo.reduce(p.x, -100.0, [1], lambda a, b: hlo.maximum(a, b))], x=x)
    check(out[0], x.sum(axis=1))
    check(out[1], x.max(axis=1))


def test_argmax_ties_first_index(run, check):
    x = np.array([[1, 3, 3, 0], [5, 5, 5, 5], [-np.inf, -np.inf, -np.inf, -np.inf], [0, -1, 7, 7]], np.float32)
    out = run(lambda p: [*hlo.argmax(p.x, 1), *hlo.argmax(p.x, 0)], x=x)
    check(out[0], x.max(axis=1))
    check(out[1], np.argmax(x, axis=1).astype(np.int32))
    check(out[2], x.max(axis=0))
    check(out[3], np.argmax(x, axis=0).astype(np.int32))


@pytest.mark.parametrize("dtype", [np.int32, BF16, np.float16], ids=["s32", "bf16", "f16"])
def test_argmax_dtypes(run, check, rng, dtype):
    x = sample(rng, (4, 6), dtype, -3, 3)
    x = np.round(x.astype(np.float32)).astype(dtype)  # many ties
    values, index = run(lambda p: list(hlo.argmax(p.x, -1)), x=x)
    check(values, x.max(axis=-1))
    check(index, np.argmax(x, axis=-1).astype(np.int32))


def test_argmax_index_offset_and_dtype(run, check):
    x = np.array([[0.0, 2.0, 1.0], [4.0, 4.0, 0.0]], np.float32)
    _, index = run(lambda p: list(hlo.argmax(p.x, 1, index_offset=p.o)), x=x, o=np.int32(30))
    check(index, np.array([31, 30], np.int32))
    # 64-bit indices (the offset a constant: 64-bit host inputs are a known bug, see test_runtime.py)
    _, index = run(lambda p: list(hlo.argmax(p.x, 0, index_dtype=hlo.s64, index_offset=hlo.constant(5, hlo.s64))),
                   x=x)
    check(index, np.array([6, 6, 5], np.int64))


def test_argmax_explicit_indices(run, check):
    x = np.array([[0.0, 2.0, 2.0], [4.0, 1.0, 4.0]], np.float32)
    ix = np.array([[10, 7, 5], [3, 9, 1]], np.int32)  # each element's index, given outright
    values, index = run(lambda p: list(hlo.argmax(p.x, 1, indices=p.ix)), x=x, ix=ix)
    check(values, np.array([2.0, 4.0], np.float32))
    check(index, np.array([5, 1], np.int32))  # ties: the smallest index wins


def test_argmax_rank1_to_scalar(run, check):
    x = np.array([2.0, 9.0, 9.0, 1.0], np.float32)
    values, index = run(lambda p: list(hlo.argmax(p.x, 0)), x=x)
    check(values, np.float32(9.0))
    check(index, np.int32(1))


@pytest.mark.parametrize("dtype", [np.float32, np.int32, BF16], ids=["f32", "s32", "bf16"])
@pytest.mark.parametrize("dim", [0, 1])
def test_sort_ascending_and_descending(run, check, rng, dtype, dim):
    x = sample(rng, (4, 5), dtype, -20, 20)
    up = run(lambda p: hlo.sort([p.x], dim)[0], x=x)
    down = run(lambda p: hlo.sort([p.x], dim, descending=True)[0], x=x)
    check(up, np.sort(x, axis=dim))
    check(down, np.flip(np.sort(x, axis=dim), axis=dim))


def test_sort_two_operands_together_stable(run, check):
    keys = np.array([[3.0, 1.0, 3.0, 2.0, 1.0], [0.0, 0.0, -1.0, 5.0, 0.0]], np.float32)
    pos = np.broadcast_to(np.arange(5, dtype=np.int32), keys.shape).copy()
    up = run(lambda p: hlo.sort([p.k, p.i], 1), k=keys, i=pos)
    down = run(lambda p: hlo.sort([p.k, p.i], 1, descending=True), k=keys, i=pos)
    order_up = np.argsort(keys, axis=1, kind="stable")
    order_down = np.argsort(-keys, axis=1, kind="stable")
    check(up[0], np.take_along_axis(keys, order_up, 1))
    check(up[1], order_up.astype(np.int32))
    check(down[0], np.take_along_axis(keys, order_down, 1))
    check(down[1], order_down.astype(np.int32))


def test_sort_custom_comparator(run, check):
    x = np.array([3, -7, 1, -2, 5], np.int32)
    got = run(lambda p: hlo.sort([p.x], 0, comparator=lambda a, b: hlo.compare(hlo.abs(a), hlo.abs(b), "LT"))[0],
              x=x)
    check(got, x[np.argsort(np.abs(x), kind="stable")])


def test_ascending_and_descending_sort_in_one_program(run, check):
    x = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]], np.float32)
    out = run(lambda p: [hlo.sort([p.x], 1)[0], hlo.sort([p.x], 1, descending=True)[0]], x=x)
    check(out[0], np.sort(x, axis=1))
    check(out[1], -np.sort(-x, axis=1))


# ---------------------------------------------------------------------------------------------------------- tuples

def test_tuple_and_get_tuple_element(run, check):
    a = np.arange(3, dtype=np.float32)
    b = np.array([[1, 2]], np.int32)

    def fn(p):
        t = hlo.tuple_([p.a, p.b, p.a * 2])
        assert isinstance(t.shape, hlo.TupleShape)
        return [hlo.get_tuple_element(t, 2), hlo.get_tuple_element(t, 1), hlo.get_tuple_element(t, 0)]

    out = run(fn, a=a, b=b)
    check(out[0], a * 2)
    check(out[1], b)
    check(out[2], a)


def test_replica_id_tp1(run, check):
    check(run(lambda p: hlo.replica_id()), np.uint32(0))


# ------------------------------------------------------------------------------------------------------------ PyHLO

def test_pyhlo_elementwise_dot_broadcast_iota(run, check, rng):
    h = sample(rng, (2, 3), np.float32)
    w = sample(rng, (3, 5), np.float32)
    v = sample(rng, (2,), np.float32)

    def fn(p):
        b, d = 2, 3
        s = f32[b, d].Add(p.h, p.h)
        logits = f32[b, 5].Dot(s, p.w, dot_dimension_numbers=dict(lhs_contracting_dimensions=[1],
                                                                  rhs_contracting_dimensions=[0]))
        col = f32[b, 5].Broadcast(p.v, dimensions=[0])
        pos = s32[b, 5].Iota(dimensions=[1])
        return [logits, col, pos, f32[b, d].Exp(p.h), f32[b, 5].Maximum(logits, col),
                f32[d, b].Transpose(p.h, dimensions=[1, 0]), s32[b, d].Convert(p.h), f32[6].Reshape(p.h)]

    out = run(fn, h=h, w=w, v=v)
    check(out[0], (h + h) @ w, atol=1e-4)
    check(out[1], np.broadcast_to(v[:, None], (2, 5)))
    check(out[2], np.broadcast_to(np.arange(5, dtype=np.int32), (2, 5)))
    check(out[3], np.exp(h))
    check(out[4], np.maximum((h + h) @ w, v[:, None]), atol=1e-4)
    check(out[5], h.T)
    check(out[6], h.astype(np.int32))
    check(out[7], h.reshape(6))


def test_pyhlo_dot_batch_with_preferred_type(run, check, rng):
    a = sample(rng, (2, 3, 4), BF16)
    b = sample(rng, (2, 4, 1), BF16)
    got = run(lambda p: f32[2, 3, 1].Dot(p.a, p.b, dot_dimension_numbers=dict(
        lhs_batch_dimensions=[0], rhs_batch_dimensions=[0], lhs_contracting_dimensions=[2],
        rhs_contracting_dimensions=[1])), a=a, b=b)
    check(got, np.einsum("bmk,bkn->bmn", a.astype(np.float32), b.astype(np.float32)), atol=1e-3)


def test_pyhlo_more_ops(run, check):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)

    def fn(p):
        gt = pred[3, 4].Compare(p.x, 5.0, comparison_direction="GT")
        return [
            f32[3, 4].Select(gt, p.x, 0.0),
            f32[3, 8].Concatenate(p.x, p.x, dimensions=[1]),
            f32[2, 2].Slice(p.x, [1, 0], [3, 4], [1, 2]),
            f32[3].Reduce(p.x, 0.0, dimensions=[1]),
            f32[3].Reduce(p.x, -1.0, dimensions=[1], to_apply="max"),
            f32[2, 3].DynamicSlice(p.x, 1, 1),
            f32[3, 4].DynamicUpdateSlice(p.x, f32[1, 2].Constant(-1.0), 2, 2),
            u32[()].ReplicaId(),
        ]

    out = run(fn, x=x)
    check(out[0], np.where(x > 5, x, 0))
    check(out[1], np.concatenate([x, x], 1))
    check(out[2], x[1:3, 0:4:2])
    check(out[3], x.sum(1))
    check(out[4], x.max(1))
    check(out[5], x[1:3, 1:4])
    want = x.copy()
    want[2, 2:4] = -1
    check(out[6], want)
    check(out[7], np.uint32(0))


def test_pyhlo_wrong_declared_shape_names_both_shapes():
    def fn(p):
        return f32[2, 4].Add(p.a, p.b)

    with pytest.raises(hlo.HloBuildError) as e:
        hlo.build("m", hlo.ParamSpec(a=f32[2, 3], b=f32[2, 3]), fn)
    assert str(e.value) == "Add: declared result f32[2,4] but the operands give f32[2,3]"

    with pytest.raises(hlo.HloBuildError) as e:
        hlo.build("m", hlo.ParamSpec(h=f32[2, 3], w=f32[3, 5]), lambda p: f32[2, 5].Dot(
            p.h, p.w, dot_dimension_numbers=dict(lhs_contracting_dimensions=[0], rhs_contracting_dimensions=[0])))
    assert "dot" in str(e.value).lower() and "f32[2,3]" in str(e.value) and "f32[3,5]" in str(e.value)

    with pytest.raises(hlo.HloBuildError) as e:
        hlo.build("m", hlo.ParamSpec(h=f32[2, 3], w=f32[3, 5]), lambda p: f32[5, 2].Dot(
            p.h, p.w, dot_dimension_numbers=dict(lhs_contracting_dimensions=[1], rhs_contracting_dimensions=[0])))
    assert str(e.value) == "Dot: declared result f32[5,2] but the operands give f32[2,5]"

    with pytest.raises(hlo.HloBuildError) as e:
        hlo.build("m", hlo.ParamSpec(), lambda p: s32[2, 5].Iota(dimensions=[1]) + f32[2, 5].Iota(dimensions=[1]))
    assert "add" in str(e.value) and "s32[2,5]" in str(e.value) and "f32[2,5]" in str(e.value)

    with pytest.raises(hlo.HloBuildError) as e:
        hlo.build("m", hlo.ParamSpec(v=f32[2]), lambda p: f32[2, 5].Exp(f32[5, 2].Broadcast(p.v, dimensions=[1])))
    assert str(e.value) == "Exp: declared result f32[2,5] but the operands give f32[5,2]"


def test_pyhlo_unknown_op_is_attribute_error():
    with pytest.raises(AttributeError, match="NoSuchOp"):
        f32[2].NoSuchOp
    with pytest.raises(AttributeError):
        f32[2].Parameter
    with pytest.raises(AttributeError):
        f32[2].lowercase_attribute


def test_argmax_row_with_nan(run, check):
    """A row holding NaN: its max is NaN and no value equals it, so its index is the index type's largest value."""
    x = np.array([[1.0, np.nan, 3.0], [2.0, 5.0, 5.0]], np.float32)
    values, index = run(lambda p: list(hlo.argmax(p.x, 1)), x=x)
    assert np.isnan(values[0]) and values[1] == 5.0
    check(index, np.array([np.iinfo(np.int32).max, 1], np.int32))


def test_python_numbers_lift_to_the_operand_type(run, check):
    ids = np.array([1, 2, 3], np.int32)
    out = run(lambda p: [p.ids * 2, hlo.convert(p.ids, hlo.f32) * 0.5, p.x + 1, p.ids + True], ids=ids,
              x=np.ones(3, np.float32))
    check(out[0], ids * 2)
    check(out[1], ids.astype(np.float32) * 0.5)
    check(out[2], np.full(3, 2.0, np.float32))
    check(out[3], ids + 1)
