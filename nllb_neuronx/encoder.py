"""The encoder program: source ids -> encoder states, and every decoder layer's cross-attention K and V.

One program per source bucket S. Its outputs stay on the device; the decoder reads `cross_k`/`cross_v`.
"""

from __future__ import annotations

import hlo
from hlo import nn
from hlo.types import s32

from nllb_neuronx import layers
from nllb_neuronx.program_spec import ProgramShapes, weight_params


def build_encoder(shapes: ProgramShapes, source_len: int) -> hlo.Module:
    m, b, par = shapes.model, shapes.batch_size, shapes.parallel
    spec = hlo.ParamSpec(input_ids=s32[b, source_len], attention_mask=s32[b, source_len],
                         positions=shapes.positions_shape)
    names = shapes.encoder_weight_names()
    for name, shape in weight_params(names, shapes):
        spec.add(name, shape)

    def encoder(p: hlo.Params) -> dict[str, hlo.Value]:
        w = p.__getitem__
        ids = p.input_ids                                                                       # [B, S]
        not_pad = hlo.convert(hlo.compare(ids, m.pad_token_id, "NE"), s32)
        position_ids = layers.positions(ids, nn.cumsum(not_pad, 1), m.pad_token_id)           # [B, S]
        h = layers.embed_tokens(ids, w("shared.weight"), shapes.embed_scale, par.tp)           # [B, S, H]
        h = h + hlo.convert(hlo.take(p.positions, position_ids), h.dtype)
        keep = hlo.compare(p.attention_mask, 0, "NE")                                          # [B, S]
        mask = layers.additive_mask(hlo.broadcast_in_dim(keep, [b, source_len, source_len], [0, 2]))  # [B, S, S]
        for i in range(m.encoder_layers):
            h = layers.encoder_layer(h, mask, w, f"encoder.layers.{i}", par)
        h = layers.layer_norm(h, w, "encoder.layer_norm")                                       # [B, S, H]
        cross = {}
        for kv in "kv":
            per_layer = [layers.project_heads(h, w, f"decoder.layers.{i}.encoder_attn.{kv}_proj", par.heads_local)
                         for i in range(m.decoder_layers)]                                      # L x [B, N, S, D]
            cross[f"cross_{kv}"] = hlo.concatenate([hlo.reshape(x, [1, *x.dims]) for x in per_layer], 0)
        return {"encoder_hidden_states": h, **cross}                                            # cross: [L, B, N, S, D]

    return hlo.build(f"nllb_encoder_b{b}_s{source_len}_tp{par.tp}", spec, encoder)
