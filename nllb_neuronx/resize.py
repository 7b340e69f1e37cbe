"""The resize program: a decode state stored at another length, every row kept.

Where a decoder reads every stored position (XLA CPU, `ProgramShapes.reads_stored_caches`: a shorter read is a
copy there), a step costs what the state stores, so the states are kept only as long as their rows need
(`ProgramShapes.stored_lengths`): the lockstep caches grow bucket by bucket with the batch's position
(`decode_state.py`), and the slot engine's state follows its active slots (`slot_state.py`), so a step of short
rows reads 64 cache positions, not the 512 a long row needed a while ago. This program moves a state between
lengths, one side at a time:

    "target": cache_k.<i>, cache_v.<i>           [B, N_local, T_from, D] -> [B, N_local, T_to, D]
              (or one segment of them: `slot_segments.py`, its B_j rows under its names)
    "source": cross_k.<i>, cross_v.<i>           [B, N_local, S_from, D] -> [B, N_local, S_to, D]
              encoder_attention_mask             s32[B, S_from]          -> s32[B, S_to]   (the slot engine's)

Growing pads with zeros (masked source positions, target positions no row has reached: each row's causal mask stops
at its own position); shrinking drops the tail, which the slot engine does only past every active slot's need (an
inactive slot may lose its tail: it is re-encoded and restarts at position 0 when it is reused).
"""

from __future__ import annotations

import hlo

from nllb_neuronx.program_spec import ProgramShapes
from nllb_neuronx.slot_encoder import slot_state_shapes
from nllb_neuronx.slot_segments import Segment

SIDES = ("target", "source")


def resized(x: hlo.Value, axis: int, length: int) -> hlo.Value:
    """x with dimension `axis` cut or zero-padded to `length`."""
    have = x.dims[axis]
    if length == have:
        return x
    if length < have:
        return hlo.slice_in_dim(x, 0, length, axis)
    pads = [(0, 0, 0)] * len(x.dims)
    pads[axis] = (0, length - have, 0)
    return hlo.pad(x, 0, pads)


def build_resize(shapes: ProgramShapes, side: str, from_len: int, to_len: int,
                 segment: Segment | None = None) -> hlo.Module:
    """`segment`: the target side's caches of one row segment (default every row's)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if segment is not None and side != "target":
        raise ValueError("only the target side (the self-attention caches) is stored in segments")
    if from_len == to_len:
        raise ValueError(f"a resize from {from_len} to the same length is no program")
    if side == "target":
        state = segment.cache_shapes(shapes, from_len) if segment else shapes.cache_shapes(from_len)  # [B, N, T, D]
        axis = {name: 2 for name in state}
    else:
        state = slot_state_shapes(shapes, from_len)
        axis = {name: 2 for name in shapes.cross_names()} | {"encoder_attention_mask": 1}          # [B, N, S, D]
    spec = hlo.ParamSpec()
    for name, shape in state.items():
        spec.add(name, shape)

    def resize(p: hlo.Params) -> dict[str, hlo.Value]:
        return {name: resized(p[name], axis[name], to_len) for name in state}

    rows = f"_{segment.prefix}rows{segment.first}-{segment.first + segment.rows}" if segment else ""
    return hlo.build(f"nllb_resize_{side}_{from_len}_to_{to_len}_b{shapes.batch_size}{rows}{shapes.name_suffix}",
                     spec, resize)
