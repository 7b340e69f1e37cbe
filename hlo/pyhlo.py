"""The PyHLO spelling: ops as methods of a declared result shape, as transformers-neuronx users write them.

    f32[b, v].Dot(h, w, dot_dimension_numbers=dict(lhs_contracting_dimensions=[1], rhs_contracting_dimensions=[0]))
    f32[b, s].Broadcast(x, dimensions=[0])
    s32[b, s].Iota(dimensions=[1])

Each method calls the free function of `hlo.ops` and checks that the inferred shape is the declared one, so a wrong
declaration fails at build time with both shapes named. Model code should prefer the free functions.
"""

from __future__ import annotations

from hlo import ops
from hlo.builder import HloBuildError
from hlo.types import Shape


def _dot(shape: Shape, lhs, rhs, dot_dimension_numbers):
    d = dot_dimension_numbers
    return ops.dot_general(
        lhs, rhs,
        (d.get("lhs_contracting_dimensions", []), d.get("rhs_contracting_dimensions", [])),
        (d.get("lhs_batch_dimensions", []), d.get("rhs_batch_dimensions", [])),
        preferred_element_type=shape.dtype,
    )


# CamelCase name -> function(declared shape, *args, **kwargs) -> Value
_DECLARED = {
    "Parameter": None,  # parameters come from a ParamSpec
    "Constant": lambda shape, value: ops.broadcast(ops.constant(value, shape.dtype), shape.dims),
    "Iota": lambda shape, dimensions: ops.iota(shape, dimensions[0]),
    "Broadcast": lambda shape, x, dimensions: ops.broadcast_in_dim(x, shape.dims, dimensions),
    "Reshape": lambda shape, x: ops.reshape(x, shape.dims),
    "Transpose": lambda shape, x, dimensions: ops.transpose(x, dimensions),
    "Convert": lambda shape, x: ops.convert(x, shape.dtype),
    "Dot": _dot,
    "Compare": lambda shape, a, b, comparison_direction: ops.compare(a, b, comparison_direction),
    "Select": lambda shape, p, a, b: ops.select(p, a, b),
    "Concatenate": lambda shape, *xs, dimensions: ops.concatenate(xs, dimensions[0]),
    "Slice": lambda shape, x, start, limit, strides=None: ops.slice(x, start, limit, strides),
    "DynamicSlice": lambda shape, x, *starts: ops.dynamic_slice(x, starts, shape.dims),
    "DynamicUpdateSlice": lambda shape, x, update, *starts: ops.dynamic_update_slice(x, update, starts),
    "Reduce": lambda shape, x, init, dimensions, to_apply="add": ops.reduce(x, init, dimensions, to_apply),
    "AllReduce": lambda shape, x, replica_groups=None, to_apply="add": ops.all_reduce(x, to_apply, replica_groups),
    "AllGather": lambda shape, x, dimensions, replica_groups=None: ops.all_gather(
        x, dimensions[0], shape.dims[dimensions[0]] // x.dims[dimensions[0]], replica_groups),
    "ReplicaId": lambda shape: ops.replica_id(),
}
_ELEMENTWISE = {
    "Add": ops.add, "Subtract": ops.subtract, "Multiply": ops.multiply, "Divide": ops.divide,
    "Maximum": ops.maximum, "Minimum": ops.minimum, "Exp": ops.exp, "Log": ops.log, "Rsqrt": ops.rsqrt,
    "Sqrt": ops.sqrt, "Tanh": ops.tanh, "Negate": ops.negate, "Abs": ops.abs,
}


def declared_op(shape: Shape, name: str):
    if name in _ELEMENTWISE:
        fn = _ELEMENTWISE[name]

        def build(*args, **kwargs):
            return _check(name, shape, fn(*args, **kwargs))
    elif _DECLARED.get(name) is not None:
        fn = _DECLARED[name]

        def build(*args, **kwargs):
            return _check(name, shape, fn(shape, *args, **kwargs))
    else:
        known = sorted(set(_ELEMENTWISE) | {k for k, v in _DECLARED.items() if v})
        raise AttributeError(f"{shape}.{name}: no such op; known: {', '.join(known)}")
    return build


def _check(name: str, declared: Shape, value):
    if value.shape != declared:
        raise HloBuildError(f"{name}: declared result {declared} but the operands give {value.shape}")
    return value
