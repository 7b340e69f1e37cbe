"""The slot copy program: one request encoded ahead moves from the slot engine's staging rows into a slot.

Encode-ahead (`SlotState.stage`, `SlotEngine(encode_ahead=True)`): the slot encoder (`slot_encoder.py`) writes up to
B queued requests at once into a staging area laid out like the state's encoder side at the largest source bucket,
so they are encoded as one sub-batch rather than one row whenever a slot frees; when a slot frees, this program
copies staging row `row` into slot `slot`:

    staged.cross_k.<i>, staged.cross_v.<i>   [B, N_local, S_max, D]      read, not changed
    staged.encoder_attention_mask            s32[B, S_max]
    cross_k.<i>, cross_v.<i>                 [B, N_local, S_stored, D]   updated in place (aliased)
    encoder_attention_mask                   s32[B, S_stored]

The first S_stored source positions of the row are copied (a dynamic-slice at the runtime row index, then a
dynamic-update-slice at the runtime slot index); the caller grows the state first where the row's bucket is longer.
One program per stored source length (on Neuron one: the state is stored at S_max).
"""

from __future__ import annotations

import hlo
from hlo.types import s32

from nllb_neuronx.program_spec import ProgramShapes
from nllb_neuronx.slot_encoder import slot_state_shapes

STAGED = "staged."   # the staging tensors' parameter names: this prefix and the state's names


def staging_shapes(shapes: ProgramShapes) -> dict[str, hlo.Shape]:
    """The staging area's tensors by parameter name: the state's encoder side at the largest source bucket."""
    return {STAGED + name: shape for name, shape in slot_state_shapes(shapes).items()}


def build_slot_copy(shapes: ProgramShapes, stored: int | None = None) -> hlo.Module:
    """`stored`: the source length the state is stored at (default the largest bucket)."""
    stored = stored or shapes.max_source_length
    if stored > shapes.max_source_length:
        raise ValueError(f"stored source length {stored} exceeds the largest bucket {shapes.max_source_length}")
    state = slot_state_shapes(shapes, stored)
    spec = hlo.ParamSpec(row=s32[1], slot=s32[1])
    for name, shape in {**staging_shapes(shapes), **state}.items():
        spec.add(name, shape)

    def slot_copy(p: hlo.Params) -> dict[str, hlo.Value]:
        row, slot = hlo.reshape(p.row, []), hlo.reshape(p.slot, [])                           # s32[] each
        zero = hlo.constant(0, s32)
        out = {}
        for name, shape in state.items():
            rest = [zero] * (shape.rank - 1)
            update = hlo.dynamic_slice(p[STAGED + name], [row, *rest], [1, *shape.dims[1:]])  # [1, N, S_stored, D]
            out[name] = hlo.dynamic_update_slice(p[name], update, [slot, *rest])
        return out

    name = f"nllb_slot_copy_b{shapes.batch_size}_of{stored}{shapes.name_suffix}"
    return hlo.build(name, spec, slot_copy, aliases={name: name for name in state})
