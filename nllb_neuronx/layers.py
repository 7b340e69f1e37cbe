"""M2M100/NLLB layers as pure HLO functions, mirroring HF `modeling_m2m_100.py` (names are the checkpoint's): the
encoder layer and what both programs share. Activations here are [B, P, H] (rows of tokens); the decoder layer,
written features first for decode-step speed, is in `decoder_layer.py`.

Letters: B batch, S source, T target cache, P new tokens, K keys (S or T), H d_model, N heads, D head dim, V vocab;
`_local` is per rank. `w(name)` returns the program parameter of the HF weight `name` (see `sharding.py` for layouts).
Row-parallel matmuls (out_proj, fc2) are followed by the all-reduce, then their bias, added once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

import hlo
from hlo import nn, quant
from hlo.types import f32, s8, s32

Weights = Callable[[str], hlo.Value]


def replica_groups(tp: int) -> list[list[int]]:
    """The one group of all tp ranks, named explicitly on every collective (neuronx-cc wants it spelled out)."""
    return [list(range(tp))]


def all_reduce(x: hlo.Value, tp: int) -> hlo.Value:
    return hlo.all_reduce(x, "add", replica_groups(tp)) if tp > 1 else x


def additive_mask(keep: hlo.Value) -> hlo.Value:
    """pred keep-mask -> f32: 0 where kept, f32's minimum where masked (HF adds finfo.min, not -inf)."""
    shape = keep.shape.with_dtype(f32)
    return hlo.select(keep, hlo.full(0.0, shape), hlo.full(float(np.finfo(np.float32).min), shape))


def embed_tokens(ids: hlo.Value, table_local: hlo.Value, scale: float, tp: int,
                 row_scale: tuple[hlo.Value, hlo.DType] | None = None) -> hlo.Value:
    """Scaled embedding of `ids` [B, P] from a vocab-sharded table [V_local, H] -> [B, P, H]: each rank looks up
    the ids of its shard (its rank from `hlo.rank()`, a parameter the runtime feeds), zeros elsewhere, all-reduced.
    `row_scale` (scales [V_local] f32, dtype): an int8 table's rows are multiplied by their scales into dtype."""
    v_local = table_local.dims[0]
    local = ids - hlo.rank() * v_local if tp > 1 else ids                              # [B, P], this shard's rows
    inside = hlo.and_(hlo.compare(local, 0, "GE"), hlo.compare(local, v_local, "LT"))
    index = hlo.maximum(hlo.minimum(local, v_local - 1), 0)                            # [B, P]
    rows = hlo.take(table_local, index)                                                # [B, P, H]
    if row_scale is not None:
        scales, dtype = row_scale
        rows = hlo.convert(hlo.convert(rows, f32) * hlo.broadcast_in_dim(hlo.take(scales, index), rows.dims, [0, 1]),
                           dtype)
    keep = hlo.broadcast_in_dim(inside, rows.dims, [0, 1])
    rows = hlo.select(keep, rows, hlo.full(0.0, rows.shape))
    return all_reduce(rows, tp) * scale


def positions(ids: hlo.Value, first: hlo.Value, pad: int) -> hlo.Value:
    """HF position ids for the non-pad tokens of `ids` [B, P]: (first + running count) where not pad, else pad.
    `first` [B, P] is the running count (s32) of non-pad tokens, including this one, plus the past length."""
    not_pad = hlo.convert(hlo.compare(ids, pad, "NE"), s32)
    return first * not_pad + pad


def attention(q: hlo.Value, k: hlo.Value, v: hlo.Value, mask: hlo.Value, heads_batch_only: bool = False) -> hlo.Value:
    """Softmax attention: q [B, N, P, D] over k, v [B, N, K, D] with additive mask [B, P, K] -> [B, N, P, D].

    `heads_batch_only` (one row, B = 1): the dots batch over the heads only, the row a free dimension of both sides,
    and the values are the dot's left side (the same numbers). For a cache the program has just written in place:
    batched over a size-1 row, XLA CPU drops that dimension from the written cache (a bitcast), then fuses the write
    into both the bitcast and the program's output, so it copies every cache several times per call (96 copies of
    [1, 16, 64, 64] in the 600M batch-1 decode step; none at batch 2). This form has no copies but slower dots
    (`decoder_layer.self_attention` says where each is used)."""
    b, n, p, d = q.dims
    if heads_batch_only and b != 1:
        raise ValueError(f"heads_batch_only is for one row, got {b}")
    if heads_batch_only:
        scores = hlo.dot_general(q, k, ([3], [3]), ([1], [1]), preferred_element_type=f32)     # [N, 1, P, 1, K]
        scores = hlo.reshape(scores, [b, n, p, k.dims[2]])                                     # [1, N, P, K]
    else:
        scores = hlo.dot_general(q, k, ([3], [3]), ([0, 1], [0, 1]), preferred_element_type=f32)  # [B, N, P, K]
    scores = scores + hlo.broadcast_in_dim(mask, scores.dims, [0, 2, 3])
    probs = hlo.convert(nn.softmax(scores, -1), v.dtype)                                      # [B, N, P, K]
    if heads_batch_only:
        ctx = hlo.dot_general(v, probs, ([2], [3]), ([1], [1]))                                # [N, 1, D, 1, P]
        ctx = hlo.transpose(hlo.reshape(ctx, [n, v.dims[3], p]), [0, 2, 1])                    # [N, P, D]
        return hlo.reshape(ctx, [b, n, p, v.dims[3]])                                          # [1, N, P, D]
    return hlo.dot_general(probs, v, ([3], [2]), ([0, 1], [0, 1]))                           # [B, N, P, D]


def attend(q: hlo.Value, k: hlo.Value, v: hlo.Value, mask: hlo.Value) -> hlo.Value:
    """`attention`, with the heads merged: -> [B, P, N*D]."""
    b, n, p, d = q.dims
    return hlo.reshape(hlo.transpose(attention(q, k, v, mask), [0, 2, 1, 3]), [b, p, n * d])


def heads(x: hlo.Value, n_local: int) -> hlo.Value:
    """[B, P, N*D] -> [B, N, P, D]."""
    b, p, nd = x.dims
    return hlo.transpose(hlo.reshape(x, [b, p, n_local, nd // n_local]), [0, 2, 1, 3])


def linear_columns(x: hlo.Value, w: Weights, name: str, par: "Parallel", row_parallel: bool = False,
                   features_axis: int = 0) -> hlo.Value:
    """The checkpoint's Linear `name` on features-first x [in, C] -> [out, C]: W @ x + bias; `row_parallel`: the
    partial product of this rank's in-features, without the bias (the caller all-reduces, then adds it once). Every
    linear of the programs goes through here or `linear`: an int8 weight (s8 parameter, `quantize.py`) is computed in
    the backend's `hlo.quant` form `par.quant_form`, with its scales `<name>.weight_scale`; a row-parallel one that
    quantizes its activations (`int8_dot`) takes the whole column's scale (max-all-reduced), so tp ranks compute what
    one rank would. `features_axis` 1: x is rows of tokens [C, in] (int8 weights only; the result is still [out, C])."""
    weight, b = w(f"{name}.weight"), (None if row_parallel else w(f"{name}.bias"))
    if weight.dtype != s8:
        return nn.linear_columns(x, weight, b)
    groups = replica_groups(par.tp) if par.tp > 1 and row_parallel else None
    return quant.quantized_linear_columns(x, weight, w(f"{name}.weight_scale"), b, par.quant_form,
                                          replica_groups=groups, features_axis=features_axis)


def linear(x: hlo.Value, w: Weights, name: str, par: "Parallel", row_parallel: bool = False) -> hlo.Value:
    """The checkpoint's Linear `name` on rows of tokens x [B, P, in] -> [B, P, out]: x @ W.T + bias (`row_parallel`:
    as `linear_columns`). An int8 weight is computed as W_q @ x.T (x contracted on its last axis, the weight on the
    left), transposed back: on XLA CPU an s8 dot with the weight on the right packs the whole weight every call, 5-15x
    slower (benchmarks/RESULTS.md, "int8 weights")."""
    if w(f"{name}.weight").dtype != s8:
        return nn.linear(x, w(f"{name}.weight"), None if row_parallel else w(f"{name}.bias"))
    b, p, h = x.dims
    y = linear_columns(hlo.reshape(x, [b * p, h]), w, name, par, row_parallel, features_axis=1)  # [out, B*P]
    return hlo.reshape(hlo.transpose(y, [1, 0]), [b, p, y.dims[0]])


def embed(ids: hlo.Value, w: Weights, scale: float, tp: int, dtype: hlo.DType) -> hlo.Value:
    """`embed_tokens` from the shared table in `dtype` (the amp's): a table in that dtype, or int8 rows times their
    scales (the LM head's per-output-channel scales: one per vocabulary row), dequantized after the lookup."""
    table = w("shared.weight")
    if table.dtype != s8:
        return embed_tokens(ids, table, scale, tp)
    return embed_tokens(ids, table, scale, tp, (w("shared.weight_scale"), dtype))


def lm_head(h: hlo.Value, w: Weights, par: "Parallel") -> hlo.Value:
    """Vocab-sharded logits of features-first states h [H, B] -> f32 [V_local, B]: the shared table as the LM head."""
    table = w("shared.weight")
    if table.dtype != s8:
        return hlo.dot_general(table, h, ([1], [0]), preferred_element_type=f32)
    return quant.quantized_linear_columns(h, table, w("shared.weight_scale"), None, par.quant_form, out_dtype=f32)


def project_heads(x: hlo.Value, w: Weights, name: str, par: "Parallel", scale: float = 1.0) -> hlo.Value:
    """A column-parallel projection (q_proj, k_proj or v_proj) of x [B, P, H] -> [B, N_local, P, D]."""
    y = linear(x, w, name, par)                                                                # [B, P, N_local*D]
    return heads(y * scale if scale != 1.0 else y, par.heads_local)


def out_proj(ctx: hlo.Value, w: Weights, prefix: str, par: "Parallel") -> hlo.Value:
    """Row-parallel output projection [B, P, N_local*D] -> [B, P, H], all-reduced, bias added once."""
    y = all_reduce(linear(ctx, w, f"{prefix}.out_proj", par, row_parallel=True), par.tp)
    return y + hlo.broadcast_in_dim(hlo.convert(w(f"{prefix}.out_proj.bias"), y.dtype), y.dims, [2])


def feed_forward(x: hlo.Value, w: Weights, prefix: str, par: "Parallel") -> hlo.Value:
    """fc2(relu(fc1(x))): fc1 column-parallel, fc2 row-parallel + all-reduce + bias."""
    h = nn.relu(linear(x, w, f"{prefix}.fc1", par))                                          # [B, P, F_local]
    y = all_reduce(linear(h, w, f"{prefix}.fc2", par, row_parallel=True), par.tp)            # [B, P, H]
    return y + hlo.broadcast_in_dim(hlo.convert(w(f"{prefix}.fc2.bias"), y.dtype), y.dims, [2])


def layer_norm(x: hlo.Value, w: Weights, name: str, axis: int = -1) -> hlo.Value:
    """The checkpoint's LayerNorm `name` over the features: the last axis, or 0 for features-first activations."""
    return nn.layer_norm(x, w(f"{name}.weight"), w(f"{name}.bias"), eps=1e-5, axis=axis)


@dataclass(frozen=True)
class Parallel:
    """What layer code needs to know about the split: tp degree and per-rank heads."""

    tp: int
    heads_local: int
    head_dim: int
    quant_form: str = quant.DEQUANT_DOT   # the `hlo.quant` form of int8 linears (`quantize.form_for_backend`)


def encoder_layer(h: hlo.Value, mask: hlo.Value, w: Weights, prefix: str, par: Parallel) -> hlo.Value:
    """Pre-LN self-attention and feed-forward blocks; h [B, S, H], additive mask [B, S, S]."""
    x = layer_norm(h, w, f"{prefix}.self_attn_layer_norm")
    attn = f"{prefix}.self_attn"
    q = project_heads(x, w, f"{attn}.q_proj", par, par.head_dim ** -0.5)                        # [B, N, S, D]
    k = project_heads(x, w, f"{attn}.k_proj", par)
    v = project_heads(x, w, f"{attn}.v_proj", par)
    h = h + out_proj(attend(q, k, v, mask), w, attn, par)
    x = layer_norm(h, w, f"{prefix}.final_layer_norm")
    return h + feed_forward(x, w, prefix, par)
