"""The slot reorder program: slot b of the self-attention cache becomes a copy of slot `index[b]` (beam search).

Only the self-attention caches move (each layer's [B, N_local, T, D], donated and updated in place): a request's beams share one
source, so their cross-attention K/V are equal already. Slots outside a beam request keep themselves (index[b] = b).
"""

from __future__ import annotations

import hlo
from hlo.types import s32

from nllb_neuronx.program_spec import ProgramShapes

def build_slot_reorder(shapes: ProgramShapes, target_len: int | None = None) -> hlo.Module:
    """`target_len`: the target positions the caches are stored at (default the largest bucket)."""
    b, state = shapes.batch_size, shapes.cache_shapes(target_len)
    spec = hlo.ParamSpec(index=s32[b])
    for name, shape in state.items():
        spec.add(name, shape)

    def slot_reorder(p: hlo.Params) -> dict[str, hlo.Value]:
        return {name: hlo.take(p[name], p.index, axis=0) for name in state}                    # [B, N, T, D]

    t = next(iter(state.values())).dims[2]
    return hlo.build(f"nllb_slot_reorder_b{b}_t{t}{shapes.name_suffix}", spec, slot_reorder,
                     aliases={name: name for name in state})
