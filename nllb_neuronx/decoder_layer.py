"""One cached M2M100/NLLB decoder layer, features first: the layout in which a decode step reads each weight fast.

Activations are [H, C]: features first, one column per new token, columns ordered (p, b) (C = P*B). Every linear is
W[out, in] @ x[in, C] -> [out, C] (`layers.linear_columns`: `nn.linear_columns`, or an int8 form). At batch 8, XLA
CPU runs that dot about 3x faster than
x @ W.T (the 256k-row LM head 64-71 vs 190-205 ms, fc1 0.8-1.2 vs 3.2-4.1 ms; batch 1 about even; see
benchmarks/RESULTS.md): its kernel packs only the small operand. XLA folds a transpose of a dot's result back into
x @ W.T, so the decoder keeps this layout end to end and never transposes a projection's output.

Attention itself runs per (row, head) on the caches' [B, N, K, D] layout (`layers.attention`, batched dots): a
reshape and transpose of the projected heads, which XLA leaves alone. (Keeping the caches features first and
attending by multiply-and-reduce was tried: 26 vs 2 ms for 12 layers at batch 8.) The caches may come in row
segments, each stored at its own length (the slot engine's long rows on XLA CPU, `slot_segments.py`): each segment's
rows attend to their own caches, and the contexts are joined again by rows.
Letters as in `layers.py`; mirrors HF `M2M100DecoderLayer` (pre-LN, q scaled after its bias).
"""

from __future__ import annotations

import hlo
from hlo import nn
from nllb_neuronx.layers import Parallel, Weights, all_reduce, attention, layer_norm, linear_columns


def project_heads(x: hlo.Value, w: Weights, name: str, par: Parallel, p_len: int, scale: float = 1.0) -> hlo.Value:
    """A column-parallel projection (q_proj, k_proj or v_proj) of x [H, P*B] -> [B, N_local, P, D]."""
    n_local = par.heads_local
    y = linear_columns(x, w, name, par)                                                       # [N_local*D, P*B]
    if scale != 1.0:
        y = y * scale
    nd, c = y.dims
    y = hlo.reshape(y, [n_local, nd // n_local, p_len, c // p_len])                          # [N, D, P, B]
    return hlo.transpose(y, [3, 0, 2, 1])


def row_parallel(x: hlo.Value, w: Weights, name: str, par: Parallel) -> hlo.Value:
    """A row-parallel linear (out_proj, fc2) [in_local, C] -> [H, C]: all-reduced, then its bias added once."""
    y = all_reduce(linear_columns(x, w, name, par, row_parallel=True), par.tp)                       # [H, C]
    return y + hlo.broadcast_in_dim(hlo.convert(w(f"{name}.bias"), y.dtype), y.dims, [0])


def attend(q: hlo.Value, k: hlo.Value, v: hlo.Value, mask: hlo.Value) -> hlo.Value:
    """Softmax attention of q [B, N, P, D] over k, v [B, N, K, D], additive mask [B, P, K] -> context [N*D, P*B]."""
    return context_columns(attention(q, k, v, mask))


def context_columns(ctx: hlo.Value) -> hlo.Value:
    """Attention context [B, N, P, D] -> features first [N*D, P*B]."""
    b, n, p, d = ctx.dims
    return hlo.reshape(hlo.transpose(ctx, [1, 3, 2, 0]), [n * d, p * b])                     # [N, D, P, B]


def first_positions(cache: hlo.Value, length: int) -> hlo.Value:
    """Keys or values [B, N, K_stored, D], positions [0, length) -> [B, N, length, D]: the cache itself when it holds
    exactly `length` (the dot then reads the parameter in place; a slice is a copy on XLA CPU)."""
    b, n, stored, d = cache.dims
    return cache if length == stored else hlo.slice(cache, [0, 0, 0, 0], [b, n, length, d])


def write_cache(cache: hlo.Value, new: hlo.Value, start: hlo.Value) -> hlo.Value:
    """Write new keys or values [B, N, P, D] into one layer's cache [B, N, T, D], row b at its own target position
    start[b] (s32[B]): one dynamic-update-slice per row, at runtime indices [b, 0, start[b], 0], as NxDI writes
    continuous-batching caches. The updates chain, so XLA writes them in place into the aliased cache."""
    b, n, p, d = new.dims
    for row in range(b):
        row_start = hlo.reshape(hlo.slice_in_dim(start, row, row + 1, 0), [])                    # s32[]
        update = hlo.slice_in_dim(new, row, row + 1, 0)                                          # [1, N, P, D]
        cache = hlo.dynamic_update_slice(cache, update, [row, 0, row_start, 0])
    return cache


# A segment of one row (batch 1, or a one-row long segment) stored at more positions than this reads its caches with
# `layers.attention(heads_batch_only=True)`, which spares XLA CPU its copies of the caches written in place; up to
# here those copies cost less than that form's dots. 600M, batch 1, ms a decode step, copies vs none (interleaved in
# one process): 78.5 vs 80.3 at 64 stored positions, 82.7 vs 81.3 at 128, 91.7 vs 85.5 at 256, 113.0 vs 90.9 at 512.
ONE_ROW_COPIES_UP_TO = 64


def rows_of(x: hlo.Value, first: int, rows: int) -> hlo.Value:
    """Rows [first, first + rows) of x [B, ...]; x itself where that is all of it."""
    return x if rows == x.dims[0] else hlo.slice_in_dim(x, first, first + rows, 0)


def self_attention(q, new_k, new_v, caches, self_masks, starts):
    """Cached self-attention of q [B, N, P, D] whose keys and values new_k, new_v [B, N, P, D] are written first, the
    caches in row segments (`slot_segments.py`; one segment: every row): segment j's caches (k, v) [B_j, N, T_j, D],
    additive mask [B_j, P, T_bucket_j] and start s32[B_j] hold rows [B_0 + .. + B_(j-1), +B_j). Returns (context
    [N*D, P*B], the updated caches per segment)."""
    contexts, updated, first = [], [], 0
    for (cache_k, cache_v), mask, start in zip(caches, self_masks, starts):
        rows = cache_k.dims[0]
        cache_k = write_cache(cache_k, rows_of(new_k, first, rows), start)
        cache_v = write_cache(cache_v, rows_of(new_v, first, rows), start)
        bucket = mask.dims[2]
        keys, values = first_positions(cache_k, bucket), first_positions(cache_v, bucket)        # [B_j, N, T, D]
        heads_only = rows == 1 and cache_k.dims[2] > ONE_ROW_COPIES_UP_TO
        contexts.append(attention(rows_of(q, first, rows), keys, values, mask, heads_only))      # [B_j, N, P, D]
        updated.append((cache_k, cache_v))
        first += rows
    ctx = contexts[0] if len(contexts) == 1 else hlo.concatenate(contexts, 0)                    # [B, N, P, D]
    return context_columns(ctx), updated


def decoder_layer(h, self_masks, cross_mask, caches, cross, w: Weights, layer: int, starts, par: Parallel):
    """One cached decoder layer over P new tokens, row b at target positions [start[b], start[b] + P).

    h [H, P*B]; cross_mask [B, P, S] additive; this layer's self-attention caches in row segments (one: every row),
    per segment j: caches[j] = (k, v) [B_j, N, T_j, D], returned updated, self_masks[j] [B_j, P, T_bucket_j] additive
    and starts[j] s32[B_j]; its cross (k, v) [B, N, S_stored, D] were written by an encoder program: the first S
    source positions are read (S_stored >= S, the rest masked by every row that attends here).
    """
    prefix = f"decoder.layers.{layer}"
    p_len = cross_mask.dims[1]
    scale = par.head_dim ** -0.5
    x = layer_norm(h, w, f"{prefix}.self_attn_layer_norm", axis=0)
    attn = f"{prefix}.self_attn"
    q = project_heads(x, w, f"{attn}.q_proj", par, p_len, scale)                              # [B, N, P, D]
    new_k = project_heads(x, w, f"{attn}.k_proj", par, p_len)                                 # [B, N, P, D]
    new_v = project_heads(x, w, f"{attn}.v_proj", par, p_len)
    ctx, caches = self_attention(q, new_k, new_v, caches, self_masks, starts)                 # [N*D, P*B]
    h = h + row_parallel(ctx, w, f"{attn}.out_proj", par)

    x = layer_norm(h, w, f"{prefix}.encoder_attn_layer_norm", axis=0)
    attn = f"{prefix}.encoder_attn"
    q = project_heads(x, w, f"{attn}.q_proj", par, p_len, scale)
    source_len = cross_mask.dims[2]
    keys, values = first_positions(cross[0], source_len), first_positions(cross[1], source_len)
    h = h + row_parallel(attend(q, keys, values, cross_mask), w, f"{attn}.out_proj", par)

    x = layer_norm(h, w, f"{prefix}.final_layer_norm", axis=0)
    ffn = nn.relu(linear_columns(x, w, f"{prefix}.fc1", par))                                 # [F_local, P*B]
    return h + row_parallel(ffn, w, f"{prefix}.fc2", par), caches
