"""The slot move programs: two slots, one of each cache segment (`slot_segments.py`), swap their requests.

The slot engine keeps its furthest rows in the long cache segment by swapping a short slot's request that outgrew
the others with a long slot's request behind it (or a free long slot). A move is two calls of each of two programs,
one for the self-attention caches and one for the encoder side, swapping rows `a` (a short slot) and `b` (a long slot)
at runtime indices:

    part "take": reads the two rows (the state is left as it is)
        build_slot_move_caches   cache_k.<i>, cache_v.<i>            [B - R, N_local, T_short, D]
                                 long_cache_k.<i>, long_cache_v.<i>  [R, N_local, T_long, D]       (T_long >= T_short)
                                 -> to_long.cache_k.<i>, ...         [1, N_local, T_long, D]   (slot a's row)
                                    to_short.cache_k.<i>, ...        [1, N_local, T_short, D]  (slot b's row)
        build_slot_move          cross_k.<i>, cross_v.<i>            [B, N_local, S_stored, D]
                                 encoder_attention_mask              s32[B, S_stored]
                                 -> row_a.<name>, row_b.<name>       [1, ...] each
    part "put": writes them swapped, in place (donated and aliased): the same state and the rows "take" returned.

Why two parts: a swap in one program reads row a of a tensor that the same program updates in place. The read and
the dynamic-update-slice have no data dependency between them, so XLA copies every donated tensor before updating it
(seen in XLA CPU's optimized module: a `copy` of each cache and cross-attention tensor; 120 ms for the cache swap at
the 600M shape, batch 8, T 128/512, instead of two rows). With the rows read by one call and written by the next,
"put" reads nothing it writes and runs in place.

The short slot's cache row is zero-padded to T_long; the long slot's is cut to T_short, which loses only positions
no row reads: the engine moves a request out of the long segment only where it is behind the one moving in, which
the short segment is stored past.
"""

from __future__ import annotations

import hlo
from hlo.types import s32

from nllb_neuronx.program_spec import ProgramShapes
from nllb_neuronx.resize import resized
from nllb_neuronx.slot_encoder import put_slot_row, slot_row, slot_state_shapes
from nllb_neuronx.slot_segments import cache_names, cache_shapes, segments

PARTS = ("take", "put")
TO_LONG, TO_SHORT = "to_long.", "to_short."          # the cache rows "take" returns: slot a's, slot b's
ROW_A, ROW_B = "row_a.", "row_b."                    # the encoder-side rows "take" returns


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")


def _slots(p: hlo.Params) -> tuple[hlo.Value, hlo.Value]:
    return hlo.reshape(p.a, []), hlo.reshape(p.b, [])                                       # s32[] each


def build_slot_move_caches(shapes: ProgramShapes, target_len: int, long_rows: int, long_len: int,
                           part: str = "take") -> hlo.Module:
    """One part of the swap of the self-attention caches of short slot `a` and long slot `b` (slot numbers, s32[1]
    each); the short segment stored at `target_len` positions, the long one (`long_rows` slots) at `long_len` >=
    `target_len`."""
    _check_part(part)
    if not long_rows or long_len < target_len:
        raise ValueError(f"a move needs a long segment stored at least as long as the short one, got long_rows "
                         f"{long_rows}, lengths {target_len} and {long_len}")
    short, long = segments(shapes.batch_size, long_rows)
    state = cache_shapes(shapes, (short, long), (target_len, long_len))
    spec = hlo.ParamSpec(a=s32[1], b=s32[1])
    for name, shape in state.items():
        spec.add(name, shape)
    if part == "put":
        for name in shapes.cache_names():
            row = state[name].dims[1:]                                                          # [N, T, D]
            spec.add(TO_LONG + name, hlo.Shape(state[name].dtype, (1, row[0], long_len, row[2])))
            spec.add(TO_SHORT + name, hlo.Shape(state[name].dtype, (1, row[0], target_len, row[2])))

    def take(p: hlo.Params) -> dict[str, hlo.Value]:
        a, b = _slots(p)
        b = b - long.first                                                                      # its long-segment row
        out = {}
        for name in shapes.cache_names():
            out[TO_LONG + name] = resized(slot_row(p[short.prefix + name], a), 2, long_len)    # [1, N, T_long, D]
            out[TO_SHORT + name] = resized(slot_row(p[long.prefix + name], b), 2, target_len)  # [1, N, T_short, D]
        return out

    def put(p: hlo.Params) -> dict[str, hlo.Value]:
        a, b = _slots(p)
        b = b - long.first
        out = {}
        for name in shapes.cache_names():
            out[short.prefix + name] = put_slot_row(p[short.prefix + name], p[TO_SHORT + name], a)
            out[long.prefix + name] = put_slot_row(p[long.prefix + name], p[TO_LONG + name], b)
        return out

    name = (f"nllb_slot_move_caches_{part}_b{shapes.batch_size}_t{target_len}_long{long_rows}x{long_len}"
            f"{shapes.name_suffix}")
    if part == "take":
        return hlo.build(name, spec, take)
    return hlo.build(name, spec, put, aliases={n: n for n in cache_names(shapes, (short, long))})


def build_slot_move(shapes: ProgramShapes, stored: int | None = None, part: str = "take") -> hlo.Module:
    """One part of the swap of the encoder sides of slots `a` and `b` (s32[1] each); `stored`: the source positions
    they are stored at (default the largest bucket)."""
    _check_part(part)
    b, state = shapes.batch_size, slot_state_shapes(shapes, stored)
    spec = hlo.ParamSpec(a=s32[1], b=s32[1])
    for name, shape in state.items():
        spec.add(name, shape)
    if part == "put":
        for name, shape in state.items():
            row = hlo.Shape(shape.dtype, (1, *shape.dims[1:]))                                  # [1, ...]
            spec.add(ROW_A + name, row)
            spec.add(ROW_B + name, row)

    def take(p: hlo.Params) -> dict[str, hlo.Value]:
        first, second = _slots(p)
        out = {}
        for name in state:
            out[ROW_A + name], out[ROW_B + name] = slot_row(p[name], first), slot_row(p[name], second)
        return out

    def put(p: hlo.Params) -> dict[str, hlo.Value]:
        first, second = _slots(p)
        return {name: put_slot_row(put_slot_row(p[name], p[ROW_B + name], first), p[ROW_A + name], second)
                for name in state}

    s = state["encoder_attention_mask"].dims[1]
    module_name = f"nllb_slot_move_{part}_b{b}_s{s}{shapes.name_suffix}"
    if part == "take":
        return hlo.build(module_name, spec, take)
    return hlo.build(module_name, spec, put, aliases={name: name for name in state})
