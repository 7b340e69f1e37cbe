"""A built `Module` as an XLA `HloModuleProto` (our schema subset in `hlo.proto`)."""

from __future__ import annotations

import numpy as np

from hlo import proto
from hlo.builder import Computation, Module, Value
from hlo.types import Shape, TupleShape

TUPLE_TYPE = 13  # xla.PrimitiveType.TUPLE


def shape_proto(shape: Shape | TupleShape):
    if isinstance(shape, TupleShape):
        return proto.ShapeProto(element_type=TUPLE_TYPE, tuple_shapes=[shape_proto(s) for s in shape.elements])
    return proto.ShapeProto(
        element_type=shape.dtype.primitive_type,
        dimensions=list(shape.dims),
        is_dynamic_dimension=[False] * shape.rank,
        layout=proto.LayoutProto(minor_to_major=list(range(shape.rank - 1, -1, -1))),
    )


def literal_proto(array: np.ndarray, shape: Shape):
    lit = proto.LiteralProto(shape=shape_proto(shape))
    flat = np.ascontiguousarray(array).reshape(-1)
    name = shape.dtype.name
    if name == "pred":
        lit.preds.extend(bool(v) for v in flat)
    elif name in ("s32", "s64", "u32", "u64", "f32", "f64"):
        getattr(lit, name + "s").extend(flat.tolist())
    elif name in ("u8", "s8", "f16", "bf16", "u16", "s16"):
        setattr(lit, name + "s", flat.astype(flat.dtype.newbyteorder("<")).tobytes())
    else:
        raise ValueError(f"constants of type {name} are not supported")
    return lit


def _program_shape(params: list[Value], result):
    return proto.ProgramShapeProto(
        parameters=[shape_proto(p.shape) for p in params],
        parameter_names=[p.name for p in params],
        result=shape_proto(result.shape),
    )


def instruction_proto(v: Value):
    inst = proto.HloInstructionProto(
        name=v.name, opcode=v.opcode, shape=shape_proto(v.shape), id=v.id,
        operand_ids=[o.id for o in v.operands], called_computation_ids=[c.id for c in v.called],
    )
    a = v.attrs
    if v.opcode == "parameter":
        inst.parameter_number = a["parameter_number"]
    elif v.opcode == "constant":
        inst.literal.CopyFrom(literal_proto(a["literal"], v.shape))
    elif v.opcode == "dot":
        for key in ("lhs_contracting_dimensions", "rhs_contracting_dimensions",
                    "lhs_batch_dimensions", "rhs_batch_dimensions"):
            getattr(inst.dot_dimension_numbers, key).extend(a[key])
    elif v.opcode == "slice":
        for start, limit, stride in a["slice"]:
            inst.slice_dimensions.add(start=start, limit=limit, stride=stride)
    elif v.opcode == "pad":
        for lo, hi, interior in a["padding"]:
            inst.padding_config.dimensions.add(edge_padding_low=lo, edge_padding_high=hi, interior_padding=interior)
    elif v.opcode == "gather":
        g = inst.gather_dimension_numbers
        g.offset_dims.extend(a["offset_dims"])
        g.collapsed_slice_dims.extend(a["collapsed_slice_dims"])
        g.start_index_map.extend(a["start_index_map"])
        g.index_vector_dim = a["index_vector_dim"]
        inst.gather_slice_sizes.extend(a["slice_sizes"])
    if "dimensions" in a:
        inst.dimensions.extend(a["dimensions"])
    if "dynamic_slice_sizes" in a:
        inst.dynamic_slice_sizes.extend(a["dynamic_slice_sizes"])
    if "comparison_direction" in a:
        inst.comparison_direction = a["comparison_direction"]
    if "tuple_index" in a:
        inst.tuple_index = a["tuple_index"]
    if "is_stable" in a:
        inst.is_stable = a["is_stable"]
    if "custom_call_target" in a:
        inst.custom_call_target = a["custom_call_target"]
        inst.backend_config = a["backend_config"].encode()
        inst.custom_call_api_version = 1  # API_VERSION_ORIGINAL: a string backend_config, as XlaBuilder writes it
    if "replica_groups" in a:
        # the legacy field (49): every XLA consumer reads it, including older ones such as neuronx-cc
        for group in a["replica_groups"]:
            inst.replica_groups.add(replica_ids=group)
    return inst


def computation_proto(comp: Computation):
    return proto.HloComputationProto(
        name=comp.name, id=comp.id, root_id=comp.root.id,
        instructions=[instruction_proto(v) for v in comp.instructions],
        program_shape=_program_shape(comp.parameters, comp.root),
    )


def module_to_proto(module: Module):
    entry = module.entry
    out = proto.HloModuleProto(
        name=module.name, id=1, entry_computation_name=entry.name, entry_computation_id=entry.id,
        computations=[computation_proto(c) for c in module.computations],
        host_program_shape=_program_shape(entry.parameters, entry.root),
    )
    outputs = module.output_names
    for out_name, param_name in module.aliases:
        out.input_output_alias.entries.add(
            output_shape_index=[outputs.index(out_name)],
            parameter_number=module.params.names.index(param_name),
            kind=proto.MUST_ALIAS,
        )
    return out
