"""The slot encoder program: encode k new requests and write them into chosen slots of the slot engine's state.

One program per (k rows, source bucket S, stored source length S_stored >= S). It runs the encoder (`encoder.encode`)
on s32[k, S] ids and masks, pads their cross-attention K/V and masks with zeros to S_stored (the largest bucket, or on
XLA CPU what the state is stored at now: `ProgramShapes.stored_lengths`), and writes row i into slot `slots[i]` of
the state, in place (aliased):

    cross_k.<i>, cross_v.<i>   [B, N_local, S_stored, D], one pair per decoder layer
    encoder_attention_mask     s32[B, S_stored]

Every other slot is left untouched. Each write is a dynamic-update-slice at the runtime index [slots[i], 0, 0, 0]
(NxDI writes a continuous-batching prefill row the same way). Rows are written last to first, so a sub-batch padded
to k with copies of row 0 (same slot) ends with row 0's own values in that slot, whatever the padding rows hold.
"""

from __future__ import annotations

import hlo
from hlo.types import s32

from nllb_neuronx.encoder import add_encoder_params, encode
from nllb_neuronx.program_spec import ProgramShapes

def slot_state_shapes(shapes: ProgramShapes, source_len: int | None = None) -> dict[str, hlo.Shape]:
    """The slot engine's encoder-side state stored at `source_len` positions (default the largest bucket), by
    parameter name."""
    stored = source_len or shapes.max_source_length
    return {**shapes.cross_shapes(stored), "encoder_attention_mask": s32[shapes.batch_size, stored]}


def slot_row(x: hlo.Value, slot: hlo.Value) -> hlo.Value:
    """Row `slot` (s32[], a runtime index) of x [B, ...] -> [1, ...]: a dynamic-slice."""
    zero = hlo.constant(0, s32)
    return hlo.dynamic_slice(x, [slot] + [zero] * (x.shape.rank - 1), [1, *x.dims[1:]])


def put_slot_row(x: hlo.Value, row: hlo.Value, slot: hlo.Value) -> hlo.Value:
    """x [B, ...] with row `slot` (s32[], a runtime index) replaced by row [1, ...]: a dynamic-update-slice (in place
    where x is donated)."""
    zero = hlo.constant(0, s32)
    return hlo.dynamic_update_slice(x, row, [slot] + [zero] * (x.shape.rank - 1))


def insert_sizes(batch_size: int) -> tuple[int, ...]:
    """The sub-batch sizes compiled for admission: powers of two below the batch size, and the batch size."""
    sizes, k = [], 1
    while k < batch_size:
        sizes.append(k)
        k *= 2
    return tuple(sizes + [batch_size])


def build_slot_encoder(shapes: ProgramShapes, rows: int, source_len: int, stored: int | None = None) -> hlo.Module:
    """`stored`: the source length the state is stored at (default the largest bucket)."""
    if not 1 <= rows <= shapes.batch_size:
        raise ValueError(f"rows must lie in [1, {shapes.batch_size}], got {rows}")
    stored = stored or shapes.max_source_length
    if source_len > stored:
        raise ValueError(f"source bucket {source_len} exceeds the stored source length {stored}")
    spec = hlo.ParamSpec(input_ids=s32[rows, source_len], attention_mask=s32[rows, source_len], slots=s32[rows])
    state = slot_state_shapes(shapes, stored)
    state_names = list(state)
    for name, shape in state.items():
        spec.add(name, shape)
    add_encoder_params(spec, shapes)

    def slot_encoder(p: hlo.Params) -> dict[str, hlo.Value]:
        _, cross = encode(p, shapes, p.input_ids, p.attention_mask)                            # [k, N, S, D] each
        tail = stored - source_len
        pad_source = [(0, 0, 0)] * 2 + [(0, tail, 0), (0, 0, 0)]
        new = {name: hlo.pad(x, 0.0, pad_source) for name, x in cross.items()}                  # [k, N, S_max, D]
        new["encoder_attention_mask"] = hlo.pad(p.attention_mask, 0, [(0, 0, 0), (0, tail, 0)])  # S -> S_max
        state = {name: p[name] for name in state_names}
        for row in reversed(range(rows)):
            slot = hlo.reshape(hlo.slice_in_dim(p.slots, row, row + 1, 0), [])                   # s32[]
            for name in new:                                            # [1, N, S_max, D] each, the mask [1, S_max]
                state[name] = put_slot_row(state[name], hlo.slice_in_dim(new[name], row, row + 1, 0), slot)
        return state

    name = f"nllb_slot_encoder_b{shapes.batch_size}_k{rows}_s{source_len}_of{stored}{shapes.name_suffix}"
    return hlo.build(name, spec, slot_encoder, aliases={name: name for name in state_names})
