"""The slot copy program: one request encoded ahead moves from the slot engine's staging rows into a slot.

Encode-ahead (`SlotState.stage`, `SlotEngine(encode_ahead=True)`): the slot encoder (`slot_encoder.py`) writes up to
B queued requests at once into a staging area laid out like the state's encoder side, stored at
`ProgramShapes.staged_length` of their source bucket (on XLA CPU the bucket, elsewhere the largest), so they are
encoded as one sub-batch rather than one row whenever a slot frees; when a slot frees, this program copies staging
row `row` into slot `slot`:

    staged.cross_k.<i>, staged.cross_v.<i>   [B, N_local, S_staged, D]   read, not changed
    staged.encoder_attention_mask            s32[B, S_staged]
    cross_k.<i>, cross_v.<i>                 [B, N_local, S_stored, D]   updated in place (aliased)
    encoder_attention_mask                   s32[B, S_stored]

The row (a dynamic-slice at the runtime row index), padded with zeros from S_staged to S_stored positions (a zero
mask: never attended), is written at the runtime slot index (a dynamic-update-slice); the caller grows the state
first to hold the row's bucket (S_stored >= S_staged). One program per (staged, stored) pair of source lengths (on
Neuron one: both are S_max).
"""

from __future__ import annotations

import hlo
from hlo.types import s32

from nllb_neuronx.program_spec import ProgramShapes
from nllb_neuronx.resize import resized
from nllb_neuronx.slot_encoder import put_slot_row, slot_row, slot_state_shapes

STAGED = "staged."   # the staging tensors' parameter names: this prefix and the state's names


def staging_shapes(shapes: ProgramShapes, staged: int | None = None) -> dict[str, hlo.Shape]:
    """The staging area's tensors by parameter name: the state's encoder side at `staged` source positions (default
    the largest bucket)."""
    return {STAGED + name: shape for name, shape in slot_state_shapes(shapes, staged).items()}


def build_slot_copy(shapes: ProgramShapes, stored: int | None = None, staged: int | None = None) -> hlo.Module:
    """`stored`, `staged`: the source lengths the state and the staging area are stored at (default the largest
    bucket); `staged` <= `stored`."""
    stored, staged = stored or shapes.max_source_length, staged or shapes.max_source_length
    if not staged <= stored <= shapes.max_source_length:
        raise ValueError(f"need staged <= stored <= the largest bucket {shapes.max_source_length} (source lengths), "
                         f"got staged {staged}, stored {stored}")
    state = slot_state_shapes(shapes, stored)
    spec = hlo.ParamSpec(row=s32[1], slot=s32[1])
    for name, shape in {**staging_shapes(shapes, staged), **state}.items():
        spec.add(name, shape)

    def slot_copy(p: hlo.Params) -> dict[str, hlo.Value]:
        row, slot = hlo.reshape(p.row, []), hlo.reshape(p.slot, [])                           # s32[] each
        out = {}
        for name, shape in state.items():
            source_dim = 2 if shape.rank == 4 else 1                        # K/V [B, N, S, D], mask [B, S]
            update = resized(slot_row(p[STAGED + name], row), source_dim, stored)             # [1, N, S_stored, D]
            out[name] = put_slot_row(p[name], update, slot)
        return out

    stage = "" if staged == stored else f"_from{staged}"
    name = f"nllb_slot_copy_b{shapes.batch_size}_of{stored}{stage}{shapes.name_suffix}"
    return hlo.build(name, spec, slot_copy, aliases={name: name for name in state})
