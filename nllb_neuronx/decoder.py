"""The decoder program: P new target tokens per row at positions [start, start + P), with the KV cache on device.

One program per (P, target bucket T, source bucket S, head). P = 1 is the decode step; P > 1 a known prefix (decoder
start + language code). The layers run features first (`decoder_layer.py` says why): hidden states [H, P*B]. The
self-attention cache [L, B, N_local, T_max, D] is updated in place (aliased); attention reads its first T positions,
so moving to a larger bucket keeps the cache. The head is either "logits" (all-gathered [V_padded, B] for the last
new token: vocab first, the LM head's natural result), "greedy" (the argmax token id [B], chosen on the device), or
"sample" (a token id [B] drawn on the device among the `max_top_k` most likely); `heads.py` has them.
"""

from __future__ import annotations

import hlo
from hlo import nn
from hlo.types import f32, s32

from nllb_neuronx import decoder_layer, heads, layers
from nllb_neuronx.heads import HEADS
from nllb_neuronx.program_spec import ProgramShapes, weight_params


def build_decoder(shapes: ProgramShapes, new_tokens: int, bucket: int, source_len: int, head: str) -> hlo.Module:
    if head not in HEADS:
        raise ValueError(f"decoder head must be one of {HEADS}, got {head!r}")
    m, b, par, p_len = shapes.model, shapes.batch_size, shapes.parallel, new_tokens
    cache, cross = shapes.cache_shape(), shapes.cross_shape(source_len)
    spec = hlo.ParamSpec(input_ids=s32[b, p_len], start=s32[()], encoder_attention_mask=s32[b, source_len],
                         cache_k=cache, cache_v=cache, cross_k=cross, cross_v=cross, positions=shapes.positions_shape)
    if head == "sample":
        spec.add("temperature", f32[()]).add("top_k", s32[()]).add("top_p", f32[()]).add("uniform", f32[b])
    for name, shape in weight_params(shapes.decoder_weight_names(), shapes):
        spec.add(name, shape)

    def decoder(p: hlo.Params) -> dict[str, hlo.Value]:
        w = p.__getitem__
        ids = p.input_ids                                                                        # [B, P]
        not_pad = hlo.convert(hlo.compare(ids, m.pad_token_id, "NE"), s32)
        position_ids = layers.positions(ids, nn.cumsum(not_pad, 1) + p.start, m.pad_token_id)   # [B, P]
        columns = [1, 0]                                                                         # to [P, B]
        h = layers.embed_tokens(hlo.transpose(ids, columns), w("shared.weight"), shapes.embed_scale, par.tp)
        h = h + hlo.convert(hlo.take(p.positions, hlo.transpose(position_ids, columns)), h.dtype)  # [P, B, H]
        h = hlo.reshape(hlo.transpose(h, [2, 0, 1]), [m.d_model, p_len * b])                     # [H, P*B]

        query_pos = hlo.iota(s32[b, p_len, bucket], 1) + p.start                                 # [B, P, T]
        self_mask = layers.additive_mask(hlo.compare(hlo.iota(s32[b, p_len, bucket], 2), query_pos, "LE"))
        keep = hlo.compare(p.encoder_attention_mask, 0, "NE")                                    # [B, S]
        cross_mask = layers.additive_mask(hlo.broadcast_in_dim(keep, [b, p_len, source_len], [0, 2]))

        caches = (p.cache_k, p.cache_v)
        for i in range(m.decoder_layers):
            h, caches = decoder_layer.decoder_layer(h, self_mask, cross_mask, caches, (p.cross_k, p.cross_v), w, i,
                                                    p.start, bucket, par)
        last = hlo.slice_in_dim(h, (p_len - 1) * b, p_len * b, 1)                                # [H, B]
        last = layers.layer_norm(last, w, "decoder.layer_norm", axis=0)
        logits = hlo.dot_general(w("shared.weight"), last, ([1], [0]),
                                 preferred_element_type=f32)                                     # [V_local, B]
        out = {"cache_k": caches[0], "cache_v": caches[1]}
        if head == "logits":
            out["logits"] = heads.logits(logits, par.tp)                                         # [V_pad, B]
        elif head == "greedy":
            out["next_token"] = heads.greedy(logits, m.vocab_size, par.tp)                       # [B]
        else:
            out["next_token"] = heads.sample(logits, m.vocab_size, par.tp, p.temperature, p.top_k, p.top_p,
                                             p.uniform, shapes.compile.max_top_k)                # [B]
        return out

    label = f"sample_k{shapes.compile.max_top_k}" if head == "sample" else head
    name = f"nllb_decoder_{label}_b{b}_p{p_len}_t{bucket}_s{source_len}_tp{par.tp}"
    return hlo.build(name, spec, decoder, aliases={"cache_k": "cache_k", "cache_v": "cache_v"})
