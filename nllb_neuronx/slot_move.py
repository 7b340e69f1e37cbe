"""The slot move program: the encoder side of slot b (its cross-attention K/V and source mask) becomes slot
`index[b]`'s. With the slot reorder program (`slot_reorder.py`, the self-attention caches) it moves requests between
slots: the slot engine keeps its furthest rows in the long cache segment (`slot_segments.py`) by swapping them with
short rows as they grow.

    cross_k.<i>, cross_v.<i>   [B, N_local, S_stored, D]   (donated, updated in place)
    encoder_attention_mask     s32[B, S_stored]
"""

from __future__ import annotations

import hlo
from hlo.types import s32

from nllb_neuronx.program_spec import ProgramShapes
from nllb_neuronx.slot_encoder import slot_state_shapes


def build_slot_move(shapes: ProgramShapes, stored: int | None = None) -> hlo.Module:
    """`stored`: the source positions the encoder side is stored at (default the largest bucket)."""
    b, state = shapes.batch_size, slot_state_shapes(shapes, stored)
    spec = hlo.ParamSpec(index=s32[b])
    for name, shape in state.items():
        spec.add(name, shape)

    def slot_move(p: hlo.Params) -> dict[str, hlo.Value]:
        return {name: hlo.take(p[name], p.index, axis=0) for name in state}                   # [B, ...]

    s = state["encoder_attention_mask"].dims[1]
    return hlo.build(f"nllb_slot_move_b{b}_s{s}{shapes.name_suffix}", spec, slot_move,
                     aliases={name: name for name in state})
