"""The slot move programs: two slots, one of each cache segment (`slot_segments.py`), swap their requests.

The slot engine keeps its furthest rows in the long cache segment by swapping a short slot's request that outgrew
the others with a long slot's request behind it (or a free long slot). Two programs, each swapping rows `a` (a short
slot) and `b` (a long slot) at runtime indices, in place (donated and aliased), so a move costs two rows' copies
rather than a pass over every slot's cache:

    build_slot_move_caches   cache_k.<i>, cache_v.<i>            [B - R, N_local, T_short, D]
                             long_cache_k.<i>, long_cache_v.<i>  [R, N_local, T_long, D]       (T_long >= T_short)
    build_slot_move          cross_k.<i>, cross_v.<i>            [B, N_local, S_stored, D]
                             encoder_attention_mask              s32[B, S_stored]

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


def build_slot_move_caches(shapes: ProgramShapes, target_len: int, long_rows: int, long_len: int) -> hlo.Module:
    """Swap the self-attention caches of short slot `a` and long slot `b` (slot numbers, s32[1] each); the short
    segment stored at `target_len` positions, the long one (`long_rows` slots) at `long_len` >= `target_len`."""
    if not long_rows or long_len < target_len:
        raise ValueError(f"a move needs a long segment stored at least as long as the short one, got long_rows "
                         f"{long_rows}, lengths {target_len} and {long_len}")
    short, long = segments(shapes.batch_size, long_rows)
    spec = hlo.ParamSpec(a=s32[1], b=s32[1])
    for name, shape in cache_shapes(shapes, (short, long), (target_len, long_len)).items():
        spec.add(name, shape)

    def slot_move_caches(p: hlo.Params) -> dict[str, hlo.Value]:
        a = hlo.reshape(p.a, [])                                                               # s32[]
        b = hlo.reshape(p.b, []) - long.first                                                  # its long-segment row
        out = {}
        for name in shapes.cache_names():
            short_cache, long_cache = p[short.prefix + name], p[long.prefix + name]
            from_short = resized(slot_row(short_cache, a), 2, long_len)                        # [1, N, T_long, D]
            from_long = resized(slot_row(long_cache, b), 2, target_len)                        # [1, N, T_short, D]
            out[short.prefix + name] = put_slot_row(short_cache, from_long, a)
            out[long.prefix + name] = put_slot_row(long_cache, from_short, b)
        return out

    name = f"nllb_slot_move_caches_b{shapes.batch_size}_t{target_len}_long{long_rows}x{long_len}{shapes.name_suffix}"
    return hlo.build(name, spec, slot_move_caches, aliases={n: n for n in cache_names(shapes, (short, long))})


def build_slot_move(shapes: ProgramShapes, stored: int | None = None) -> hlo.Module:
    """Swap the encoder sides of slots `a` and `b` (s32[1] each); `stored`: the source positions they are stored at
    (default the largest bucket)."""
    b, state = shapes.batch_size, slot_state_shapes(shapes, stored)
    spec = hlo.ParamSpec(a=s32[1], b=s32[1])
    for name, shape in state.items():
        spec.add(name, shape)

    def slot_move(p: hlo.Params) -> dict[str, hlo.Value]:
        first, second = hlo.reshape(p.a, []), hlo.reshape(p.b, [])                             # s32[] each
        out = {}
        for name in state:
            row_a, row_b = slot_row(p[name], first), slot_row(p[name], second)                 # [1, ...] each
            out[name] = put_slot_row(put_slot_row(p[name], row_b, first), row_a, second)
        return out

    s = state["encoder_attention_mask"].dims[1]
    return hlo.build(f"nllb_slot_move_b{b}_s{s}{shapes.name_suffix}", spec, slot_move,
                     aliases={name: name for name in state})
