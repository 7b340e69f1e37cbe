"""The encoder program: source ids -> encoder states, and every decoder layer's cross-attention K and V.

One program per source bucket S. Its outputs stay on the device; the decoder reads each layer's `cross_k.<i>` and
`cross_v.<i>` [B, N_local, S, D].
`encode()` is the program body, shared with the slot encoder (`slot_encoder.py`), which encodes a few new requests
and writes their K/V into chosen slots of the slot engine's state.
"""

from __future__ import annotations

import hlo
from hlo import nn
from hlo.types import s32

from nllb_neuronx import layers
from nllb_neuronx.program_spec import ProgramShapes, layer_name, weight_params


def add_encoder_params(spec: hlo.ParamSpec, shapes: ProgramShapes) -> hlo.ParamSpec:
    """The sinusoidal table and the weights the encoder reads."""
    spec.add("positions", shapes.positions_shape)
    for name, shape in weight_params(shapes.encoder_weight_names(), shapes):
        spec.add(name, shape)
    return spec


def encode(p: hlo.Params, shapes: ProgramShapes, ids: hlo.Value, attention_mask: hlo.Value):
    """ids, attention_mask s32[B, S] -> (encoder states [B, S, H], every decoder layer's cross-attention K and V
    [B, N_local, S, D] by parameter name: cross_k.<i>, cross_v.<i>)."""
    m, par = shapes.model, shapes.parallel
    b, source_len = ids.dims
    w = p.__getitem__
    not_pad = hlo.convert(hlo.compare(ids, m.pad_token_id, "NE"), s32)
    position_ids = layers.positions(ids, nn.cumsum(not_pad, 1), m.pad_token_id)               # [B, S]
    h = layers.embed(ids, w, shapes.embed_scale, par.tp, shapes.dtype)                         # [B, S, H]
    h = h + hlo.convert(hlo.take(p.positions, position_ids), h.dtype)
    keep = hlo.compare(attention_mask, 0, "NE")                                                # [B, S]
    mask = layers.additive_mask(hlo.broadcast_in_dim(keep, [b, source_len, source_len], [0, 2]))  # [B, S, S]
    for i in range(m.encoder_layers):
        h = layers.encoder_layer(h, mask, w, f"encoder.layers.{i}", par)
    h = layers.layer_norm(h, w, "encoder.layer_norm")                                           # [B, S, H]
    cross = {layer_name(f"cross_{kv}", i): layers.project_heads(h, w, f"decoder.layers.{i}.encoder_attn.{kv}_proj",
                                                                 par)                           # [B, N, S, D]
             for kv in "kv" for i in range(m.decoder_layers)}
    return h, cross


def build_encoder(shapes: ProgramShapes, source_len: int) -> hlo.Module:
    b = shapes.batch_size
    spec = add_encoder_params(hlo.ParamSpec(input_ids=s32[b, source_len], attention_mask=s32[b, source_len]), shapes)

    def encoder(p: hlo.Params) -> dict[str, hlo.Value]:
        h, cross = encode(p, shapes, p.input_ids, p.attention_mask)
        return {"encoder_hidden_states": h, **cross}

    return hlo.build(f"nllb_encoder_b{b}_s{source_len}{shapes.name_suffix}", spec, encoder)
