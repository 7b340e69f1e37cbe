"""The reorder program: gather batch rows of the decoder state on the device (beam search, beams from rows).

Row i of the result is row `index[i]` of the input, for the self-attention cache [L, B, N_local, T, D] and the
cross-attention K/V [L, B, N_local, S, D]. The caches are donated, so no second copy stays alive.
"""

from __future__ import annotations

import hlo
from hlo.types import s32

from nllb_neuronx.program_spec import ProgramShapes

STATE = ("cache_k", "cache_v", "cross_k", "cross_v")


def build_reorder(shapes: ProgramShapes, source_len: int) -> hlo.Module:
    b = shapes.batch_size
    cache, cross = shapes.cache_shape(), shapes.cross_shape(source_len)
    spec = hlo.ParamSpec(index=s32[b], cache_k=cache, cache_v=cache, cross_k=cross, cross_v=cross)

    def reorder(p: hlo.Params) -> dict[str, hlo.Value]:
        return {name: hlo.take(p[name], p.index, axis=1) for name in STATE}        # [L, B, N, K, D]

    return hlo.build(f"nllb_reorder_b{b}_s{source_len}_tp{shapes.parallel.tp}", spec, reorder,
                     aliases={name: name for name in STATE})
