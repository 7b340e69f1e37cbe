"""The slot reorder program: slot b of the self-attention cache becomes a copy of slot `index[b]`.

Beam search reorders a request's beams: only the self-attention caches move (each layer's [B, N_local, T, D], donated
and updated in place; on XLA CPU with the caches in one segment written to fresh buffers instead,
`ProgramShapes.reorders_in_place`), as a request's beams share one source and so their cross-attention K/V are equal
already.
Slots outside a beam request keep themselves (index[b] = b). With the caches in two row segments
(`slot_segments.py`), a slot may take a slot of the other segment: that cache is cut or zero-padded to its new
segment's length first (the engine moves a row only into a segment stored past its position, so only positions no
row reads are cut). Moving whole requests between the segments (the engine keeping its furthest rows in the long
segment) swaps two slots instead: `slot_move.py`.
"""

from __future__ import annotations

import hlo
from hlo.types import s32

from nllb_neuronx.decoder_layer import rows_of
from nllb_neuronx.program_spec import ProgramShapes
from nllb_neuronx.resize import resized
from nllb_neuronx.slot_segments import cache_names, cache_shapes, segments


def build_slot_reorder(shapes: ProgramShapes, target_len: int | None = None, long_rows: int = 0,
                       long_len: int = 0) -> hlo.Module:
    """`target_len`: the target positions the caches are stored at (default the largest bucket); with `long_rows`
    > 0 those of the short segment, the long one's at `long_len`."""
    b = shapes.batch_size
    parts = segments(b, long_rows)
    lengths = (target_len or shapes.compile.max_target_length, long_len)[: len(parts)]
    spec = hlo.ParamSpec(index=s32[b])
    for name, shape in cache_shapes(shapes, parts, lengths).items():
        spec.add(name, shape)

    def slot_reorder(p: hlo.Params) -> dict[str, hlo.Value]:
        out = {}
        for seg, t in zip(parts, lengths):
            index = rows_of(p.index, seg.first, seg.rows)                                      # s32[B_j]
            for layer_cache in shapes.cache_names():
                pool = [resized(p[other.prefix + layer_cache], 2, t) for other in parts]       # [B_i, N, T_j, D]
                pool = pool[0] if len(pool) == 1 else hlo.concatenate(pool, 0)                  # [B, N, T_j, D]
                out[seg.prefix + layer_cache] = hlo.take(pool, index, axis=0)                  # [B_j, N, T_j, D]
        return out

    split = f"_long{long_rows}x{long_len}" if long_rows else ""
    names = cache_names(shapes, parts)
    # With two segments the gather reads their concatenation, a fresh buffer, so XLA CPU updates the aliased caches
    # without copying them first (600M, batch 4, 512 positions: 80 ms aliased, 86 ms into fresh buffers); with one
    # it would copy them (73 ms aliased, 21 ms not).
    in_place = shapes.reorders_in_place or len(parts) > 1
    return hlo.build(f"nllb_slot_reorder_b{b}_t{lengths[0]}{split}{shapes.name_suffix}", spec, slot_reorder,
                     aliases={name: name for name in names} if in_place else None)
