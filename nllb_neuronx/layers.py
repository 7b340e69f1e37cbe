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
from hlo import nn
from hlo.types import f32, s32

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


def embed_tokens(ids: hlo.Value, table_local: hlo.Value, scale: float, tp: int) -> hlo.Value:
    """Scaled embedding of `ids` [B, P] from a vocab-sharded table [V_local, H] -> [B, P, H]: each rank looks up
    the ids of its shard (its rank from `hlo.rank()`, a parameter the runtime feeds), zeros elsewhere, all-reduced."""
    v_local = table_local.dims[0]
    local = ids - hlo.rank() * v_local if tp > 1 else ids                              # [B, P], this shard's rows
    inside = hlo.and_(hlo.compare(local, 0, "GE"), hlo.compare(local, v_local, "LT"))
    rows = hlo.take(table_local, hlo.maximum(hlo.minimum(local, v_local - 1), 0))      # [B, P, H]
    keep = hlo.broadcast_in_dim(inside, rows.dims, [0, 1])
    rows = hlo.select(keep, rows, hlo.full(0.0, rows.shape))
    return all_reduce(rows, tp) * scale


def positions(ids: hlo.Value, first: hlo.Value, pad: int) -> hlo.Value:
    """HF position ids for the non-pad tokens of `ids` [B, P]: (first + running count) where not pad, else pad.
    `first` [B, P] is the running count (s32) of non-pad tokens, including this one, plus the past length."""
    not_pad = hlo.convert(hlo.compare(ids, pad, "NE"), s32)
    return first * not_pad + pad


def attention(q: hlo.Value, k: hlo.Value, v: hlo.Value, mask: hlo.Value) -> hlo.Value:
    """Softmax attention: q [B, N, P, D] over k, v [B, N, K, D] with additive mask [B, P, K] -> [B, N, P, D]."""
    scores = hlo.dot_general(q, k, ([3], [3]), ([0, 1], [0, 1]), preferred_element_type=f32)  # [B, N, P, K]
    scores = scores + hlo.broadcast_in_dim(mask, scores.dims, [0, 2, 3])
    probs = hlo.convert(nn.softmax(scores, -1), v.dtype)                                      # [B, N, P, K]
    return hlo.dot_general(probs, v, ([3], [2]), ([0, 1], [0, 1]))                           # [B, N, P, D]


def attend(q: hlo.Value, k: hlo.Value, v: hlo.Value, mask: hlo.Value) -> hlo.Value:
    """`attention`, with the heads merged: -> [B, P, N*D]."""
    b, n, p, d = q.dims
    return hlo.reshape(hlo.transpose(attention(q, k, v, mask), [0, 2, 1, 3]), [b, p, n * d])


def heads(x: hlo.Value, n_local: int) -> hlo.Value:
    """[B, P, N*D] -> [B, N, P, D]."""
    b, p, nd = x.dims
    return hlo.transpose(hlo.reshape(x, [b, p, n_local, nd // n_local]), [0, 2, 1, 3])


def project_heads(x: hlo.Value, w: Weights, name: str, n_local: int, scale: float = 1.0) -> hlo.Value:
    """A column-parallel projection (q_proj, k_proj or v_proj) of x [B, P, H] -> [B, N_local, P, D]."""
    y = nn.linear(x, w(f"{name}.weight"), w(f"{name}.bias"))                                   # [B, P, N_local*D]
    return heads(y * scale if scale != 1.0 else y, n_local)


def out_proj(ctx: hlo.Value, w: Weights, prefix: str, tp: int) -> hlo.Value:
    """Row-parallel output projection [B, P, N_local*D] -> [B, P, H], all-reduced, bias added once."""
    y = all_reduce(nn.linear(ctx, w(f"{prefix}.out_proj.weight")), tp)
    return y + hlo.broadcast_in_dim(hlo.convert(w(f"{prefix}.out_proj.bias"), y.dtype), y.dims, [2])


def feed_forward(x: hlo.Value, w: Weights, prefix: str, tp: int) -> hlo.Value:
    """fc2(relu(fc1(x))): fc1 column-parallel, fc2 row-parallel + all-reduce + bias."""
    h = nn.relu(nn.linear(x, w(f"{prefix}.fc1.weight"), w(f"{prefix}.fc1.bias")))            # [B, P, F_local]
    y = all_reduce(nn.linear(h, w(f"{prefix}.fc2.weight")), tp)                               # [B, P, H]
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


def encoder_layer(h: hlo.Value, mask: hlo.Value, w: Weights, prefix: str, par: Parallel) -> hlo.Value:
    """Pre-LN self-attention and feed-forward blocks; h [B, S, H], additive mask [B, S, S]."""
    x = layer_norm(h, w, f"{prefix}.self_attn_layer_norm")
    attn = f"{prefix}.self_attn"
    q = project_heads(x, w, f"{attn}.q_proj", par.heads_local, par.head_dim ** -0.5)             # [B, N, S, D]
    k = project_heads(x, w, f"{attn}.k_proj", par.heads_local)
    v = project_heads(x, w, f"{attn}.v_proj", par.heads_local)
    h = h + out_proj(attend(q, k, v, mask), w, attn, par.tp)
    x = layer_norm(h, w, f"{prefix}.final_layer_norm")
    return h + feed_forward(x, w, prefix, par.tp)
