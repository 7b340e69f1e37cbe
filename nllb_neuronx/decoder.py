"""The decoder program: P new target tokens per row, row b at positions [start[b], start[b] + P), cache on device.

One program per (P, target bucket T, source bucket S, stored source length, head). P = 1 is the decode step; P > 1 a
known prefix (decoder start + language code). Every row has its own position (`start`, s32[B]): its sinusoidal
positions, its causal mask (row b reads cache positions <= its own, so whatever a slot's previous user left behind
is never read) and its cache write (one runtime-indexed dynamic-update-slice per row). Lockstep batches pass the same
start for every row; the slot engine (`engine.py`) passes each slot's own. `active` (s32[B], nonzero: in use) marks
the rows whose token matters: an inactive row's token comes back as -1.

The layers run features first (`decoder_layer.py` says why): hidden states [H, P*B]. Each layer's self-attention
cache (`cache_k.<i>`, `cache_v.<i>`: [B, N_local, T_stored, D], `cache_len` positions, by default T_max) is its own
parameter, updated in place (aliased); attention reads its first T positions, so moving to a larger bucket keeps the
cache. Cross-attention K/V (`cross_k.<i>`, `cross_v.<i>`) are stored at `cross_len` source positions ([B, N_local,
S_stored, D], with the source mask [B, S_stored]) and read at their first `source_len`: the lockstep path stores
exactly its encoder bucket; the slot engine stores what `ProgramShapes.stored_lengths` says. Where T or `source_len`
is the stored length, attention reads the parameter itself; a shorter read is a slice, which XLA CPU copies: there
every program reads all stored positions, masked (`ProgramShapes.reads_stored_caches`), and the states are stored
only as long as their rows need (`ProgramShapes.stored_lengths`, `resize.py`). The slot engine's step there may take
its caches in two row segments (`long_rows`, `slot_segments.py`: `long_cache_k.<i>`, `long_cache_v.<i>` for the last
rows), each stored and read at its own length.
The head is either "logits" (all-gathered [V_padded, B] for the last new token: vocab first, the LM head's natural
result), "greedy" (the argmax token id [B], chosen on the device), "sample" (a token id [B] drawn on the device
among the `max_top_k` most likely), or "beam" (a beam-search step's candidates, [B, K], and the greedy token);
`heads.py` and `beam_head.py` have them.

`steps` > 1 (greedy head, one new token) unrolls that many greedy decode steps into one program (Neuron takes no
dynamic while loop): each step's argmax token is the next step's input on the device, row b's step s at position
start[b] + s; the tokens come back as `next_tokens` s32[B, steps]. Rows keep stepping past EOS; the host discards what
follows it. It saves the per-call cost (dispatch, argument handling, token copies) of steps - 1 calls; every step
still reads every weight.
"""

from __future__ import annotations

import hlo
from hlo import nn
from hlo.types import f32, s32

from nllb_neuronx import beam_head, decoder_layer, heads, layers, slot_segments
from nllb_neuronx.heads import HEADS
from nllb_neuronx.program_spec import ProgramShapes, layer_name, weight_params


def causal_mask(start: hlo.Value, p_len: int, bucket: int) -> hlo.Value:
    """Additive self-attention mask [B, P, T] of P new tokens per row, row b's at positions [start[b], start[b] + P):
    each reads the cache positions up to its own."""
    b = start.dims[0]
    query_pos = hlo.iota(s32[b, p_len, bucket], 1) + hlo.broadcast_in_dim(start, [b, p_len, bucket], [0])
    return layers.additive_mask(hlo.compare(hlo.iota(s32[b, p_len, bucket], 2), query_pos, "LE"))


def build_decoder(shapes: ProgramShapes, new_tokens: int, bucket: int, source_len: int, head: str,
                  cross_len: int | None = None, steps: int = 1, cache_len: int | None = None,
                  long_rows: int = 0, long_len: int = 0) -> hlo.Module:
    """`cross_len`: source positions the cross-attention K/V and mask are stored at (default `source_len`).
    `cache_len`: target positions the self-attention caches are stored at (default the largest target bucket).
    `steps`: greedy decode steps unrolled into the program (only with head "greedy" and one new token).
    `long_rows` > 0: the caches of the last `long_rows` rows are the long segment (`slot_segments.py`), stored and
    read at `long_len` >= `cache_len` positions; the other rows' at `cache_len` (read whole)."""
    if head not in HEADS:
        raise ValueError(f"decoder head must be one of {HEADS}, got {head!r}")
    if not isinstance(steps, int) or steps < 1 or (steps > 1 and (head != "greedy" or new_tokens != 1)):
        raise ValueError(f"steps must be 1, or more with the greedy head and one new token; got steps={steps!r}, "
                         f"head {head!r}, new_tokens {new_tokens}")
    cross_len = source_len if cross_len is None else cross_len
    cache_len = cache_len or shapes.compile.max_target_length
    if cross_len < source_len:
        raise ValueError(f"cross_len {cross_len} must hold source_len {source_len}")
    if cache_len < bucket:
        raise ValueError(f"cache_len {cache_len} must hold the target bucket {bucket}")
    segments = slot_segments.segments(shapes.batch_size, long_rows)
    if long_rows and (steps > 1 or long_len < cache_len):
        raise ValueError(f"a split cache takes one step per call and a long segment at least cache_len {cache_len} "
                         f"long; got steps={steps}, long_len={long_len}")
    if long_rows:
        bucket = cache_len                  # the segments are read whole
    if shapes.reads_stored_caches:  # XLA CPU: every stored position, masked (a shorter read is a copy there)
        bucket, source_len = cache_len, cross_len
    m, b, par, p_len = shapes.model, shapes.batch_size, shapes.parallel, new_tokens
    spec = hlo.ParamSpec(input_ids=s32[b, p_len], start=s32[b], active=s32[b],
                         encoder_attention_mask=s32[b, cross_len], positions=shapes.positions_shape)
    lengths = (cache_len, long_len)[: len(segments)]                                 # stored (and read) per segment
    buckets = (bucket, long_len)[: len(segments)]
    cache_shapes = slot_segments.cache_shapes(shapes, segments, lengths)
    for name, shape in {**cache_shapes, **shapes.cross_shapes(cross_len)}.items():
        spec.add(name, shape)
    cache_names = list(cache_shapes)
    if head == "sample":
        spec.add("temperature", f32[b]).add("top_k", s32[b]).add("top_p", f32[b]).add("uniform", f32[b])  # per row
    if head == "beam":
        spec.add("forced", s32[b]).add("beam_score", f32[b]).add("beam_group", s32[b])                  # per row
    for name, shape in weight_params(shapes.decoder_weight_names(), shapes):
        spec.add(name, shape)

    def forward(p: hlo.Params, ids: hlo.Value, start: hlo.Value, caches: dict, cross_mask):
        """ids [B, P] at positions [start[b], start[b] + P) -> (LM head logits [V_local, B] of the last, caches by
        parameter name)."""
        w = p.__getitem__
        not_pad = hlo.convert(hlo.compare(ids, m.pad_token_id, "NE"), s32)
        row_start = hlo.broadcast_in_dim(start, [b, p_len], [0])                                 # [B, P]
        position_ids = layers.positions(ids, nn.cumsum(not_pad, 1) + row_start, m.pad_token_id)  # [B, P]
        columns = [1, 0]                                                                         # to [P, B]
        h = layers.embed(hlo.transpose(ids, columns), w, shapes.embed_scale, par.tp, shapes.dtype)
        h = h + hlo.convert(hlo.take(p.positions, hlo.transpose(position_ids, columns)), h.dtype)  # [P, B, H]
        h = hlo.reshape(hlo.transpose(h, [2, 0, 1]), [m.d_model, p_len * b])                     # [H, P*B]

        starts = [decoder_layer.rows_of(start, seg.first, seg.rows) for seg in segments]        # s32[B_j] each
        self_masks = [causal_mask(s, p_len, t) for s, t in zip(starts, buckets)]                 # [B_j, P, T_j]
        caches = dict(caches)
        for i in range(m.decoder_layers):
            names = [(seg.prefix + layer_name("cache_k", i), seg.prefix + layer_name("cache_v", i)) for seg in segments]
            cross = (p[layer_name("cross_k", i)], p[layer_name("cross_v", i)])                    # [B, N, S, D]
            h, updated = decoder_layer.decoder_layer(h, self_masks, cross_mask,
                                                     [(caches[k], caches[v]) for k, v in names], cross, w, i, starts,
                                                     par)
            for (k, v), (new_k, new_v) in zip(names, updated):
                caches[k], caches[v] = new_k, new_v
        last = hlo.slice_in_dim(h, (p_len - 1) * b, p_len * b, 1)                                # [H, B]
        last = layers.layer_norm(last, w, "decoder.layer_norm", axis=0)
        return layers.lm_head(last, w, par), caches                                              # [V_local, B] f32

    def decoder(p: hlo.Params) -> dict[str, hlo.Value]:
        source_mask = hlo.slice_in_dim(p.encoder_attention_mask, 0, source_len, 1)              # [B, S]
        keep = hlo.compare(source_mask, 0, "NE")                                                 # [B, S]
        cross_mask = layers.additive_mask(hlo.broadcast_in_dim(keep, [b, p_len, source_len], [0, 2]))
        active = hlo.compare(p.active, 0, "NE")                                                  # [B]
        caches, ids, start, tokens = {n: p[n] for n in cache_names}, p.input_ids, p.start, []
        for step in range(steps):
            if step:
                ids, start = hlo.reshape(tokens[-1], [b, 1]), start + 1                        # [B, 1], [B]
            logits, caches = forward(p, ids, start, caches, cross_mask)
            out = dict(caches)
            if head == "logits":
                out["logits"] = heads.logits(logits, par.tp)                                     # [V_pad, B]
                return out
            if head == "beam":  # the beams' candidates ([B, K] each), and the greedy token for greedy rows
                chosen = beam_head.beam(logits, m.vocab_size, par.tp, p.forced, p.beam_score, p.beam_group,
                                        beam_head.candidates_for(b))
                token = chosen.pop("next_token")
                out.update(chosen)
            elif head == "greedy":
                token = heads.greedy(logits, m.vocab_size, par.tp)                               # [B]
            else:
                token = heads.sample(logits, m.vocab_size, par.tp, p.temperature, p.top_k, p.top_p, p.uniform,
                                     shapes.compile.max_top_k)                                   # [B]
            tokens.append(hlo.select(active, token, hlo.full(-1, token.shape)))                  # [B]
        if steps == 1:
            out["next_token"] = tokens[0]                                                        # [B]
        else:
            out["next_tokens"] = hlo.concatenate([hlo.reshape(t, [b, 1]) for t in tokens], 1)    # [B, steps]
        return out

    label = {"sample": f"sample_k{shapes.compile.max_top_k}",
             "beam": f"beam_k{beam_head.candidates_for(b)}"}.get(head, head)
    stored = f"_of{cross_len}" if cross_len != source_len else ""
    stored += f"_cache{cache_len}" if cache_len != shapes.compile.max_target_length else ""
    stored += f"_long{long_rows}x{long_len}" if long_rows else ""
    unrolled = f"_x{steps}" if steps > 1 else ""
    name = f"nllb_decoder_{label}_b{b}_p{p_len}_t{bucket}_s{source_len}{stored}{unrolled}{shapes.name_suffix}"
    return hlo.build(name, spec, decoder, aliases={n: n for n in cache_names})
