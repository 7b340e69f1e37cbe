"""The decoder program's last step: what it does with the LM head's vocab-sharded logits [V_local, B] (f32).

- `logits`: all-gathered [V_padded, B], for the host (HF generate(), beam search, custom loops).
- `greedy`: the first index of the maximum over the whole vocabulary, s32[B], chosen on the device.
- `sample`: one token per row drawn on the device, s32[B]: temperature, top-k, top-p (as HF's warpers apply them),
  and an inverse-CDF draw with one uniform number per row from the host's seeded generator. Every parameter is per
  row ([B]), so requests with different settings share a step; a row with temperature 0 is greedy (the first
  candidate: the first index of the maximum, the `greedy` head's token).
- `beam`: one beam-search step's candidates, decided on the device (`beam_head.py`).

Written for neuronx-cc as AWS documents it (`hlo.targets.neuron` checks it): the rank comes from `hlo.rank()`,
argmax is a reduce-max then a reduce-min, and sampling never sorts the whole vocabulary. Each rank keeps the
`max_top_k` (K) most likely of its shard, sorting tiles of at most 16,384 logits (the TopK limit neuronx-cc's sort
rewrite hits, NCC_EVRF014); the ranks all-gather only those tp x K candidates, and temperature, top-k, top-p and the
draw apply to the K most likely of them. transformers-neuronx and NxDI sample the same way (NxDI's default K is 256).
So `top_k=0` (HF: no top-k limit) means the K most likely here; `top_k > K` is refused by `NLLBForSampling.sample`.
On XLA CPU this is also faster: the sampling head alone at NLLB's vocabulary, batch 8, tp 1, takes about 90 ms against
2.6 s for the former sort of the whole vocabulary (measured on the 2-core development machine).

A row whose logits hold a NaN gets the token -1 from `greedy` and `sample` (-1 is never a token id, so the host can
tell the row apart; it used to be INT32_MAX).
"""

from __future__ import annotations

import math

import hlo
from hlo import nn
from hlo.targets.neuron import SORT_LIMIT
from hlo.types import f32, s32

from nllb_neuronx.layers import replica_groups

HEADS = ("logits", "greedy", "sample", "beam")  # beam: beam_head.py
NAN_TOKEN = -1  # the token of a row whose logits hold a NaN
_PAD_ID = 2 ** 31 - 1  # the id of a tile's padding: after every real id, so it sorts after every real -inf logit


def logits(logits_local: hlo.Value, tp: int) -> hlo.Value:
    """The whole (padded) vocabulary's logits on every rank: [V_local, B] -> [V_padded, B]."""
    return hlo.all_gather(logits_local, 0, tp, replica_groups(tp)) if tp > 1 else logits_local


def greedy(logits_local: hlo.Value, vocab_size: int, tp: int) -> hlo.Value:
    """The first index of the maximum over the whole vocabulary: [V_local, B] -> s32[B]; -1 for a row with a NaN."""
    v_local, b = logits_local.dims
    ids = _global_ids(logits_local, tp)                                                     # [V_local, B]
    # no padding rows (tp divides the vocabulary): no mask, one pass less (batch 8, 600M: 4-8 vs 6-12 ms)
    masked = logits_local if v_local * tp == vocab_size else _mask_padding(logits_local, ids, vocab_size)
    nan = _any_nan(masked)                                                                  # [B]
    best, token = hlo.argmax(masked, 0, indices=ids)                                        # [B], [B]
    if tp > 1:  # each rank's best, then the best of those (ties: the smallest id, as on one rank)
        best = hlo.select(nan, hlo.full(float("nan"), best.shape), best)                    # a NaN row tells the others
        bests = hlo.all_gather(hlo.reshape(best, [1, b]), 0, tp, replica_groups(tp))       # [tp, B]
        tokens = hlo.all_gather(hlo.reshape(token, [1, b]), 0, tp, replica_groups(tp))
        nan = _any_nan(bests)
        token = hlo.argmax(bests, 0, indices=tokens)[1]
    return hlo.select(nan, hlo.full(NAN_TOKEN, token.shape), token)


def sample(logits_local: hlo.Value, vocab_size: int, tp: int, temperature: hlo.Value, top_k: hlo.Value,
           top_p: hlo.Value, uniform: hlo.Value, max_top_k: int, tile: int = SORT_LIMIT) -> hlo.Value:
    """Draw one token per row from softmax(logits / temperature) over the `max_top_k` (K) most likely tokens,
    restricted to the `top_k` largest (0, or more than K: all K) and to the smallest set whose mass reaches `top_p`
    (as HF: the most likely token always stays), by inverse CDF with `uniform` [B] in [0, 1): [V_local, B] -> s32[B],
    -1 for a row with a NaN. `temperature` f32[B], `top_k` s32[B], `top_p` f32[B]: one setting per row; a row with
    temperature 0 takes the most likely token (ties: the smallest id), exactly as `greedy`. For top_k <= K the draw is HF's. Sorts run over tiles of at most `tile` logits; every
    rank computes the same draw from the same all-gathered candidates."""
    ids = _global_ids(logits_local, tp)                                                     # [V_local, B]
    masked = _mask_padding(logits_local, ids, vocab_size)
    nan = _any_nan(masked)                                                                  # [B]
    rows = [1, 0]                                                                           # to [B, V_local]
    values, ids = top_candidates(hlo.transpose(_nan_to_neg_inf(masked), rows), hlo.transpose(ids, rows), max_top_k,
                                 tile)                                                      # [B, K_local]
    if tp > 1:
        values = hlo.select(hlo.broadcast_in_dim(nan, values.dims, [0]), hlo.full(float("nan"), values.shape),
                            values)                                                         # tells the other ranks
        values = hlo.all_gather(values, 1, tp, replica_groups(tp))                         # [B, tp * K_local]
        ids = hlo.all_gather(ids, 1, tp, replica_groups(tp))
        nan = _any_nan(values, axis=1)
        values, ids = top_candidates(_nan_to_neg_inf(values), ids, max_top_k, tile)        # [B, C], C <= K
    token = _draw(hlo.transpose(values, rows), hlo.transpose(ids, rows), temperature, top_k, top_p, uniform)
    return hlo.select(nan, hlo.full(NAN_TOKEN, token.shape), token)


def top_candidates(values: hlo.Value, ids: hlo.Value, k: int, tile: int) -> tuple[hlo.Value, hlo.Value]:
    """The k largest values of each row and their ids, largest first: [B, N] -> [B, min(k, N)] each. Equal values
    keep their order, which is the order of their ids where ids increase along the row (as vocabulary shards and
    their survivors do): the first index of the maximum comes first, as torch.topk and a stable sort give.

    No sort covers more than `tile` values: longer rows are cut into equal tiles, each tile keeps its k largest, and
    the survivors go round again (fewer each round, as tiles hold more than tile / 2 >= k values). Each sort is of
    (values, iota) along the last dimension with a plain greater-than, then sliced: the sort + slice that neuronx-cc
    (and XLA CPU, about 20x faster than a sort with its own comparator) turns into TopK; the ids follow by a gather."""
    if not 1 <= 2 * k <= tile:
        raise ValueError(f"top candidates: k={k} must be at least 1 and at most half the sort tile {tile}")
    b, n = values.dims
    while True:
        tiles = math.ceil(n / tile)
        size = math.ceil(n / tiles)                                                          # <= tile
        if tiles * size > n:  # pad to whole tiles with -inf, which sorts last
            values = hlo.pad(values, float("-inf"), [(0, 0, 0), (0, tiles * size - n, 0)])
            ids = hlo.pad(ids, _PAD_ID, [(0, 0, 0), (0, tiles * size - n, 0)])
        keep = min(k, size)
        order = hlo.iota(s32[b, tiles, size], 2)
        values, order = hlo.sort([hlo.reshape(values, [b, tiles, size]), order], 2, descending=True)
        values = hlo.reshape(hlo.slice_in_dim(values, 0, keep, 2), [b, tiles * keep])      # [B, tiles * keep]
        order = hlo.slice_in_dim(order, 0, keep, 2)                                          # [B, tiles, keep]
        ids = _take_along_tiles(hlo.reshape(ids, [b, tiles, size]), order)                  # [B, tiles * keep]
        if tiles == 1:
            return values, ids
        n = tiles * keep


def _take_along_tiles(x: hlo.Value, position: hlo.Value) -> hlo.Value:
    """x[b, t, position[b, t, j]]: [B, T, N], s32[B, T, J] -> [B, T * J] (a gather of one element per index)."""
    b, t, j = position.dims
    index = hlo.concatenate([hlo.reshape(hlo.iota(s32[b, t, j], 0), [b, t, j, 1]),
                             hlo.reshape(hlo.iota(s32[b, t, j], 1), [b, t, j, 1]),
                             hlo.reshape(position, [b, t, j, 1])], 3)                       # [B, T, J, 3]
    taken = hlo.gather(x, index, offset_dims=[], collapsed_slice_dims=[0, 1, 2], start_index_map=[0, 1, 2],
                       index_vector_dim=3, slice_sizes=[1, 1, 1])                           # [B, T, J]
    return hlo.reshape(taken, [b, t * j])


def _draw(values, ids, temperature, top_k, top_p, uniform) -> hlo.Value:
    """Temperature, top-k, top-p and the inverse-CDF draw over candidates sorted largest first: [C, B] -> s32[B];
    parameters per row ([B]); temperature 0: the first candidate."""
    c, b = values.dims
    neg_inf = hlo.full(float("-inf"), values.shape)
    greedy = hlo.compare(temperature, 0.0, "LE")                                            # [B]
    safe = hlo.select(greedy, hlo.full(1.0, temperature.shape), temperature)                # no division by 0
    scaled = values / hlo.broadcast_in_dim(safe, [c, b], [1])                               # [C, B]
    k = hlo.select(hlo.compare(top_k, 0, "GT"), hlo.minimum(top_k, hlo.full(c, top_k.shape)),
                   hlo.full(c, top_k.shape))                                                # [B]
    kth = _pick(scaled, k - 1)                                                              # [B]
    scaled = hlo.select(hlo.compare(scaled, hlo.broadcast_in_dim(kth, [c, b], [1]), "GE"), scaled, neg_inf)
    probs = nn.softmax(scaled, 0)                                                           # [C, B]
    before = nn.cumsum(probs, 0) - probs                                                    # mass ahead of each
    rank = hlo.iota(s32[c, b], 0)
    keep = hlo.or_(hlo.compare(before, hlo.broadcast_in_dim(top_p, [c, b], [1]), "LT"), hlo.compare(rank, 0, "EQ"))
    probs = hlo.select(keep, probs, hlo.full(0.0, probs.shape))
    cdf = nn.cumsum(probs, 0)                                                               # [C, B]
    total = hlo.reduce_sum(probs, [0])                                                      # [B]
    target = hlo.broadcast_in_dim(uniform * total, [c, b], [1])
    position = hlo.reduce_sum(hlo.convert(hlo.compare(cdf, target, "LE"), s32), [0])        # candidates passed
    last = hlo.reduce_sum(hlo.convert(hlo.compare(probs, 0.0, "GT"), s32), [0]) - 1         # last kept candidate
    drawn = hlo.minimum(position, last)                                                     # [B]
    return _pick(ids, hlo.select(greedy, hlo.full(0, drawn.shape), drawn))


def _global_ids(logits_local: hlo.Value, tp: int) -> hlo.Value:
    """The vocabulary id of each of this rank's logits: [V_local, B] -> s32[V_local, B]."""
    v_local, b = logits_local.dims
    ids = hlo.iota(s32[v_local, b], 0)
    return ids + hlo.rank() * v_local if tp > 1 else ids


def _mask_padding(logits_local: hlo.Value, ids: hlo.Value, vocab_size: int) -> hlo.Value:
    """-inf for the padding rows of the vocabulary (ids >= vocab_size), so they are never chosen."""
    return hlo.select(hlo.compare(ids, vocab_size, "LT"), logits_local, hlo.full(float("-inf"), logits_local.shape))


def _any_nan(x: hlo.Value, axis: int = 0) -> hlo.Value:
    """Whether x [N, B] (or [B, N] with axis=1) holds a NaN in each of its B rows: pred[B]."""
    return hlo.compare(hlo.reduce_max(hlo.convert(hlo.compare(x, x, "NE"), f32), [axis]), 0.0, "GT")


def _nan_to_neg_inf(x: hlo.Value) -> hlo.Value:
    """NaN -> -inf, so the sort comparator sees a strict weak order (the row's result is replaced anyway)."""
    return hlo.select(hlo.compare(x, x, "NE"), hlo.full(float("-inf"), x.shape), x)


def _pick(values: hlo.Value, position: hlo.Value) -> hlo.Value:
    """values[position[b], b] for each column: [N, B], s32[B] -> [B] (a one-hot select and sum)."""
    n, b = values.dims
    hit = hlo.compare(hlo.iota(s32[n, b], 0), hlo.broadcast_in_dim(position, [n, b], [1]), "EQ")
    return hlo.reduce(hlo.select(hit, values, hlo.full(0, values.shape)), 0, [0], "add")
