"""The reorder program: gather batch rows of the decoder state on the device (beam search, beams from rows).

Row i of the result is row `index[i]` of the input, for every layer's self-attention cache [B, N_local, T, D] and
cross-attention K/V [B, N_local, S, D]. The caches are donated and updated in place where
`ProgramShapes.reorders_in_place`; on XLA CPU the rows go to fresh buffers (half the time there) and the old ones
are dropped after the call.
"""

from __future__ import annotations

import hlo
from hlo.types import s32

from nllb_neuronx.program_spec import ProgramShapes

def build_reorder(shapes: ProgramShapes, source_len: int, target_len: int | None = None) -> hlo.Module:
    """`target_len`: the positions the caches are stored at (default the largest target bucket)."""
    b = shapes.batch_size
    state = {**shapes.cache_shapes(target_len), **shapes.cross_shapes(source_len)}
    spec = hlo.ParamSpec(index=s32[b])
    for name, shape in state.items():
        spec.add(name, shape)

    def reorder(p: hlo.Params) -> dict[str, hlo.Value]:
        return {name: hlo.take(p[name], p.index, axis=0) for name in state}        # [B, N, K, D]

    t = shapes.cache_shape(target_len).dims[2]
    return hlo.build(f"nllb_reorder_b{b}_s{source_len}_t{t}{shapes.name_suffix}", spec, reorder,
                     aliases={name: name for name in state} if shapes.reorders_in_place else None)
