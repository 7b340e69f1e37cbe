"""The decoder's `beam` head: one beam-search step decided on the device; only small arrays reach the host.

What runs where (the host half is `beam.py`):
- Device, per batch row b (a slot; a beam of some request), from the LM head's vocab-sharded logits [V_local, B]:
  log_softmax over the whole vocabulary (f32; max and sum all-reduced across tensor-parallel ranks), HF's
  forced-BOS logits processor where `forced[b] >= 0` (every token -inf, the forced one 0: every beam of the request
  gets it at its first step, as HF's processor does for all of a batch item's beams), plus the row's running beam
  score `beam_score[b]`, then the row's K best candidates (score, token) by the tiled top-k of `heads.py` (tiles of
  at most 16,384 logits, each rank's K best of its shard all-gathered, then the K best of those). Then the merge
  across a request's beams: the rows with the same `beam_group[b]` pool their candidates and every row of the group
  gets the group's K best, ties broken by HF's flat index beam * V + token (beam i of a group is its i-th row in row
  order, and a row's candidates come in token order among equal scores), as torch.topk over [beams * V] gives them.
  Out: `beam_scores` f32[B, K], `beam_tokens` s32[B, K], `beam_sources` s32[B, K] (which beam of the group each
  candidate extends), and `next_token` s32[B], the greedy head's token (greedy rows share the step).
- Host (`beam.py`): HF's bookkeeping on the first 2 * num_beams of those candidates: stopping criteria (EOS, max
  length), the next running beams, finished hypotheses with the length penalty, the early-stop heuristic.

K (`candidates`) is a compile-time constant: 2 x the largest beam count the program serves (HF 5.x keeps
`max(2, 1 + number of EOS ids) * num_beams` candidates; NLLB has one EOS id, so 2 * num_beams; a group needs its
K >= 2 * num_beams best, which may all come from one row). A row whose logits hold a NaN makes its whole group's
tokens -1 (no token id is negative).
"""

from __future__ import annotations

import hlo
from hlo.targets.neuron import SORT_LIMIT
from hlo.types import f32, s32

from nllb_neuronx.heads import _any_nan, _global_ids, _mask_padding, _nan_to_neg_inf, greedy, top_candidates
from nllb_neuronx.layers import replica_groups

CANDIDATES_PER_BEAM = 2     # HF: max(2, 1 + n_eos) * num_beams candidates, with NLLB's single EOS id
NO_FORCED = -1              # `forced[b]` of a row without a forced token at this step
_LOWEST = -3.4028234663852886e38  # the lowest finite f32: a group's own -inf candidates, ranked above other groups'


def candidates_for(max_beams: int) -> int:
    """K, the candidates each row keeps, for requests of at most `max_beams` beams (the slot engine: its batch size,
    the most beams a request can take). The tiled top-k keeps at most half a sort tile."""
    k = CANDIDATES_PER_BEAM * max_beams
    if not isinstance(max_beams, int) or max_beams < 1 or 2 * k > SORT_LIMIT:
        raise ValueError(f"beam search on the device serves 1 to {SORT_LIMIT // (2 * CANDIDATES_PER_BEAM)} beams "
                         f"(a batch_size in that range), got {max_beams!r}")
    return k


def beam(logits_local: hlo.Value, vocab_size: int, tp: int, forced: hlo.Value, beam_score: hlo.Value,
         beam_group: hlo.Value, candidates: int, tile: int = SORT_LIMIT) -> dict[str, hlo.Value]:
    """[V_local, B] logits, `forced` s32[B] (-1: none), `beam_score` f32[B], `beam_group` s32[B] -> the group's
    `candidates` (K) best continuations per row, best first: beam_scores f32[B, K], beam_tokens s32[B, K] (-1 for
    a group with a NaN row), beam_sources s32[B, K]; and next_token s32[B] (greedy)."""
    v_local, b = logits_local.dims
    ids = _global_ids(logits_local, tp)                                                     # [V_local, B]
    masked = _mask_padding(logits_local, ids, vocab_size)                                   # padding: -inf
    nan = hlo.convert(_any_nan(masked), f32)                                                # [B]
    row_max = hlo.reduce_max(masked, [0])                                                   # [B]
    if tp > 1:
        row_max = hlo.all_reduce(row_max, "max", replica_groups(tp))
        nan = hlo.all_reduce(nan, "max", replica_groups(tp))
    shifted = masked - hlo.broadcast_in_dim(row_max, masked.dims, [1])                      # [V_local, B]
    total = hlo.reduce_sum(hlo.exp(shifted), [0])                                           # [B]
    if tp > 1:
        total = hlo.all_reduce(total, "add", replica_groups(tp))
    log_probs = shifted - hlo.broadcast_in_dim(hlo.log(total), masked.dims, [1])            # log_softmax
    forcing = hlo.broadcast_in_dim(hlo.compare(forced, 0, "GE"), masked.dims, [1])          # [V_local, B]
    is_forced = hlo.compare(ids, hlo.broadcast_in_dim(forced, masked.dims, [1]), "EQ")
    forced_scores = hlo.select(is_forced, hlo.full(0.0, masked.shape), hlo.full(float("-inf"), masked.shape))
    log_probs = hlo.select(forcing, forced_scores, log_probs)                               # HF's ForcedBOS
    scores = log_probs + hlo.broadcast_in_dim(beam_score, masked.dims, [1])                 # accumulated

    rows = [1, 0]                                                                           # to [B, V_local]
    values, tokens = top_candidates(hlo.transpose(_nan_to_neg_inf(scores), rows), hlo.transpose(ids, rows),
                                    candidates, tile)                                       # [B, K_local]
    if tp > 1:  # ranks hold increasing id ranges: the gathered candidates stay in id order among equal scores
        values = hlo.all_gather(values, 1, tp, replica_groups(tp))                         # [B, tp * K_local]
        tokens = hlo.all_gather(tokens, 1, tp, replica_groups(tp))
        values, tokens = top_candidates(values, tokens, candidates, tile)                  # [B, K]
    k = values.dims[1]
    out = _merge_groups(values, tokens, beam_group, k, tile)
    bad = _group_any(hlo.compare(nan, 0.0, "GT"), beam_group)                               # [B]
    out["beam_tokens"] = hlo.select(hlo.broadcast_in_dim(bad, [b, k], [0]), hlo.full(-1, out["beam_tokens"].shape),
                                    out["beam_tokens"])
    out["next_token"] = greedy(logits_local, vocab_size, tp)                                # [B]
    return out


def _same_group(group: hlo.Value) -> hlo.Value:
    """pred[B, B]: rows b and c are beams of the same request."""
    b = group.dims[0]
    return hlo.compare(hlo.broadcast_in_dim(group, [b, b], [0]), hlo.broadcast_in_dim(group, [b, b], [1]), "EQ")


def _group_any(flag: hlo.Value, group: hlo.Value) -> hlo.Value:
    """pred[B]: whether any row of each row's group has `flag`."""
    b = group.dims[0]
    hit = hlo.and_(_same_group(group), hlo.broadcast_in_dim(flag, [b, b], [1]))           # [B, B]
    return hlo.compare(hlo.reduce_max(hlo.convert(hit, f32), [1]), 0.0, "GT")


def _merge_groups(values: hlo.Value, tokens: hlo.Value, group: hlo.Value, k: int, tile: int) -> dict[str, hlo.Value]:
    """Each row's group's K best of its rows' candidates ([B, K] each, best first): [B, K] x 3 -> [B, K] x 3.

    Every row looks at all B * K candidates, in (row, rank) order, with other groups' at -inf and its own -inf ones
    at the lowest finite value (so they still come before other groups'); the stable top-k keeps that order among
    equal scores, which is HF's flat-index order. The scores are then read back from the candidates themselves."""
    b = values.dims[0]
    n = b * k
    pooled = hlo.broadcast_in_dim(hlo.reshape(values, [n]), [b, n], [1])                   # [B, B*K]: every row's
    pooled_tokens = hlo.broadcast_in_dim(hlo.reshape(tokens, [n]), [b, n], [1])
    own = hlo.reshape(hlo.broadcast_in_dim(_same_group(group), [b, b, k], [0, 1]), [b, n])  # [B, B*K]
    lowest = hlo.full(_LOWEST, pooled.shape)
    key = hlo.select(hlo.compare(pooled, float("-inf"), "EQ"), lowest, pooled)
    key = hlo.select(own, key, hlo.full(float("-inf"), pooled.shape))
    _, position = top_candidates(key, hlo.iota(s32[b, n], 1), k, max(tile, 2 * k))        # [B, K] in [0, B*K)
    source_row = hlo.divide(position, hlo.full(k, position.shape))                             # [B, K]
    return {"beam_scores": _take_along(pooled, position), "beam_tokens": _take_along(pooled_tokens, position),
            "beam_sources": _take_along(_beam_of_row(group), source_row)}


def _beam_of_row(group: hlo.Value) -> hlo.Value:
    """s32[B, B]: [b, c] = the beam index of row c in its group (how many rows of its group come before it),
    the same for every b (a row's view, for `_take_along`)."""
    b = group.dims[0]
    before = hlo.and_(_same_group(group), hlo.compare(hlo.iota(s32[b, b], 1), hlo.iota(s32[b, b], 0), "LT"))
    index = hlo.reduce_sum(hlo.convert(before, s32), [1])                                  # [B]: row c's beam
    return hlo.broadcast_in_dim(index, [b, b], [1])


def _take_along(x: hlo.Value, position: hlo.Value) -> hlo.Value:
    """x[b, position[b, j]]: [B, N], s32[B, J] -> [B, J] (one gather)."""
    b, j = position.dims
    index = hlo.concatenate([hlo.reshape(hlo.iota(s32[b, j], 0), [b, j, 1]), hlo.reshape(position, [b, j, 1])], 2)
    return hlo.gather(x, index, offset_dims=[], collapsed_slice_dims=[0, 1], start_index_map=[0, 1],
                      index_vector_dim=2, slice_sizes=[1, 1])                                # [B, J]
