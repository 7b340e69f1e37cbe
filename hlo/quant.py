"""int8 weights in linears: per-output-channel symmetric scales, two ways to compute `scale * (W_q @ x)`.

A quantized weight is `W_q` s8 [out, in] with `scale` f32 [out]: W ~= W_q * scale[:, None] (absmax per output row,
made on the host). The product `W @ x` for features-first activations x [in, C] (one column per token):

- `dequant_dot` (transformers-neuronx's form, what Neuron gets): W_q converted to the activation dtype before the dot,
  the dot in that float type, then convert to f32, multiply by `scale` broadcast along the output features, convert
  back. On Neuron the compiler dequantizes inside the matmul.
- `int8_dot` (CTranslate2's form): x quantized on the fly per column (its own absmax scale, `dynamic` activation
  quantization), an s8 x s8 -> s32 dot, then the s32 result times `scale[out] * x_scale[C]`. Neuron has no integer
  datapath (`hlo.targets.neuron` refuses integer dots): a CPU form only.

`FORMS` names them; `quantized_linear_columns` picks one by name. Both return [out, C] in x's dtype.
"""

from __future__ import annotations

from hlo import ops
from hlo.builder import Value
from hlo.types import DType, f32, s8, s32

DEQUANT_DOT = "dequant_dot"
INT8_DOT = "int8_dot"
FORMS = (DEQUANT_DOT, INT8_DOT)
S8_MAX = 127.0


def dequant_dot(weight_q: Value, scale: Value, x: Value, out_dtype: DType | None = None,
                features_axis: int = 0) -> Value:
    """scale[:, None] * (convert(W_q) @ x): W_q s8 [out, in], scale f32 [out], x [in, C] (or [C, in] with
    `features_axis` 1) -> [out, C] in `out_dtype` (default x's), as transformers-neuronx writes it (`hlo.py::dot_add`
    with `dequantize`: convert before the dot, the scale in f32 after it)."""
    y = ops.dot_general(ops.convert(weight_q, x.dtype), x, ([1], [features_axis]))     # [out, C], x's dtype
    y = ops.convert(y, f32) * ops.broadcast_in_dim(ops.convert(scale, f32), y.dims, [0])
    return ops.convert(y, out_dtype or x.dtype)


def quantize_columns(x: Value, replica_groups=None, features_axis: int = 0) -> tuple[Value, Value]:
    """Per-column symmetric int8 of features-first x [in, C]: (x_q s8 [in, C], x_scale f32 [C]) with
    x ~= x_q * x_scale; with `features_axis` 1, per row of x [C, in] (x_q [C, in]), in x's own layout. A zero column gets scale 1 (and zeros). Rounds half away from zero (`floor(|v| + 0.5)`
    with the sign put back), as CTranslate2's `std::round`. `replica_groups`: x is split over the in-features across
    these ranks (a row-parallel linear); the column maxima are all-reduced so every rank quantizes with the whole
    column's scale, as one rank would."""
    h = ops.convert(x, f32)
    amax = ops.reduce_max(ops.abs(h), [features_axis])                                    # [C]
    if replica_groups is not None:
        amax = ops.all_reduce(amax, "max", replica_groups)
    x_scale = ops.select(ops.compare(amax, 0.0, "GT"), amax / S8_MAX, ops.full(1.0, amax.shape))
    v = h / ops.broadcast_in_dim(x_scale, h.dims, [1 - features_axis])                    # in [-127, 127]
    rounded = ops.floor(ops.abs(v) + 0.5)
    signed = ops.select(ops.compare(v, 0.0, "LT"), ops.negate(rounded), rounded)
    return ops.convert(signed, s8), x_scale


def int8_dot(weight_q: Value, scale: Value, x: Value, out_dtype: DType | None = None, replica_groups=None,
             features_axis: int = 0) -> Value:
    """scale[:, None] * x_scale[None, :] * (W_q @ x_q) with x quantized per column on the fly (`quantize_columns`):
    an s8 x s8 -> s32 dot. W_q s8 [out, in], scale f32 [out], x [in, C] (or [C, in] with `features_axis` 1) ->
    [out, C] in `out_dtype` (default x's).

    On XLA CPU: one column is padded to two (an s8 matrix-vector product takes a slow path: the 256206 x 1024 LM head
    1-2 s against 40 ms with two columns), and rows of tokens are quantized in their own layout and contracted on
    their last axis: transposing x to [in, C] first made XLA give up YNNPACK's s8 dot for a generic s32 one (fc1 at
    32 tokens 25-37 ms against 1.6 ms; benchmarks/int8_linear.py and RESULTS.md)."""
    cols = x.dims[1 - features_axis]
    x_q, x_scale = quantize_columns(x, replica_groups, features_axis)                     # x's layout, [C]
    if cols == 1:
        pad = [(0, 0, 0), (0, 0, 0)]
        pad[1 - features_axis] = (0, 1, 0)
        x_q = ops.pad(x_q, ops.constant(0, s8), pad)                                      # two columns
    acc = ops.dot_general(weight_q, x_q, ([1], [features_axis]), preferred_element_type=s32)  # [out, C'] s32
    if cols == 1:
        acc = ops.slice_in_dim(acc, 0, 1, 1)                                              # [out, 1]
    y = ops.convert(acc, f32) * ops.broadcast_in_dim(ops.convert(scale, f32), acc.dims, [0])
    y = y * ops.broadcast_in_dim(x_scale, acc.dims, [1])
    return ops.convert(y, out_dtype or x.dtype)


def quantized_linear_columns(x: Value, weight_q: Value, scale: Value, bias: Value | None = None,
                             form: str = DEQUANT_DOT, out_dtype: DType | None = None, replica_groups=None,
                             features_axis: int = 0) -> Value:
    """The quantized `nn.linear_columns`: W @ x + bias with W = W_q * scale per output row, in `form` (one of FORMS);
    x [in, C], or rows of tokens [C, in] with `features_axis` 1; [out, C] in `out_dtype` (default x's).
    `replica_groups`: the in-features are split across these ranks (see `quantize_columns`; only `int8_dot` quantizes
    x)."""
    if form not in FORMS:
        raise ValueError(f"quantized linear form must be one of {FORMS}, got {form!r}")
    if weight_q.dtype != s8:
        raise ValueError(f"quantized linear: the weight must be s8, got {weight_q.dtype}")
    if form == DEQUANT_DOT:
        y = dequant_dot(weight_q, scale, x, out_dtype, features_axis)                    # [out, C]
    else:
        y = int8_dot(weight_q, scale, x, out_dtype, replica_groups, features_axis)
    if bias is not None:
        y = y + ops.broadcast_in_dim(ops.convert(bias, y.dtype), y.dims, [0])
    return y
