"""A small Python HLO language: build XLA HloModuleProtos from Python functions, and run them.

    import hlo
    from hlo import f32

    spec = hlo.ParamSpec(x=f32[2, 4], w=f32[4, 3])
    module = hlo.build("matmul", spec, lambda p: {"y": hlo.dot(p.x, p.w)})
    print(module.to_text())

`hlo` knows nothing about any model: types, the builder, ops, the proto schema, and the runtimes (`hlo.runtime`).
"""

# ruff: noqa: F401 - this module re-exports the language
from hlo.builder import RANK_PARAM, HloBuildError, Module, Params, ParamSpec, Value, build
from hlo.ops import *  # noqa: F401,F403 - the ops are the language
from hlo.ops import abs, slice  # noqa: A004 - HLO's names, exported on purpose
from hlo.types import DTYPES, DType, Shape, TupleShape, bf16, dtype_of, f16, f32, f64, pred, s8, s16, s32, s64, u8, \
    u16, u32, u64
