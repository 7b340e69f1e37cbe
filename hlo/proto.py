"""Our subset of XLA's `HloModuleProto` schema, with XLA's own message names and field numbers.

No PyPI package ships XLA's `hlo_pb2`, so the messages we emit are declared here, from `xla/service/hlo.proto` and
`xla/xla_data.proto`. They are built at import time from `descriptor_pb2` into a private `DescriptorPool` under the
package name `nllbx_hlo` (not `xla`, so nothing clashes with another copy of the schema in the process), which also
avoids the protobuf runtime-version check that protoc-generated modules perform. Serialized bytes carry only field
numbers, so XLA parses them as its own messages.

A field is written as (name, number, type[, message type or "repeated"]). Only what `hlo.emit` writes is declared.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "nllbx_hlo"
_F = descriptor_pb2.FieldDescriptorProto

INT64, INT32, BOOL, STRING, BYTES, FLOAT, DOUBLE = (
    _F.TYPE_INT64, _F.TYPE_INT32, _F.TYPE_BOOL, _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_FLOAT, _F.TYPE_DOUBLE,
)
UINT32, UINT64 = _F.TYPE_UINT32, _F.TYPE_UINT64
ENUM_AS_INT = _F.TYPE_INT32  # enums travel as varints; we write their numbers directly
REPEATED = "repeated"


def _msg(name):
    return (_F.TYPE_MESSAGE, name)


# message name -> [(field name, number, type, *flags)]
_SCHEMA: dict[str, list[tuple]] = {
    # xla_data.proto
    "LayoutProto": [("minor_to_major", 1, INT64, REPEATED)],
    "ShapeProto": [
        ("element_type", 2, ENUM_AS_INT),
        ("dimensions", 3, INT64, REPEATED),
        ("tuple_shapes", 4, _msg("ShapeProto"), REPEATED),
        ("layout", 5, _msg("LayoutProto")),
        ("is_dynamic_dimension", 6, BOOL, REPEATED),
    ],
    "ProgramShapeProto": [
        ("parameters", 1, _msg("ShapeProto"), REPEATED),
        ("result", 2, _msg("ShapeProto")),
        ("parameter_names", 3, STRING, REPEATED),
    ],
    "LiteralProto": [
        ("shape", 1, _msg("ShapeProto")),
        ("preds", 2, BOOL, REPEATED),
        ("u8s", 3, BYTES),
        ("s32s", 4, INT32, REPEATED),
        ("s64s", 5, INT64, REPEATED),
        ("u32s", 6, UINT32, REPEATED),
        ("u64s", 7, UINT64, REPEATED),
        ("f32s", 8, FLOAT, REPEATED),
        ("f64s", 9, DOUBLE, REPEATED),
        ("tuple_literals", 10, _msg("LiteralProto"), REPEATED),
        ("f16s", 11, BYTES),
        ("bf16s", 13, BYTES),
        ("u16s", 16, BYTES),
        ("s16s", 17, BYTES),
        ("s8s", 15, BYTES),
    ],
    "DotDimensionNumbers": [
        ("lhs_contracting_dimensions", 1, INT64, REPEATED),
        ("rhs_contracting_dimensions", 2, INT64, REPEATED),
        ("lhs_batch_dimensions", 3, INT64, REPEATED),
        ("rhs_batch_dimensions", 4, INT64, REPEATED),
    ],
    "GatherDimensionNumbers": [
        ("offset_dims", 1, INT64, REPEATED),
        ("collapsed_slice_dims", 2, INT64, REPEATED),
        ("start_index_map", 3, INT64, REPEATED),
        ("index_vector_dim", 4, INT64),
    ],
    "PaddingConfigDimension": [
        ("edge_padding_low", 1, INT64),
        ("edge_padding_high", 2, INT64),
        ("interior_padding", 3, INT64),
    ],
    "PaddingConfig": [("dimensions", 1, _msg("PaddingConfigDimension"), REPEATED)],
    "ReplicaGroup": [("replica_ids", 1, INT64, REPEATED)],
    "CollectiveDeviceListProto": [("replica_groups", 1, _msg("ReplicaGroup"), REPEATED)],
    "OpMetadata": [("op_type", 1, STRING), ("op_name", 2, STRING)],
    # hlo.proto
    "SliceDimensions": [("start", 1, INT64), ("limit", 2, INT64), ("stride", 3, INT64)],
    "HloInstructionProto": [
        ("name", 1, STRING),
        ("opcode", 2, STRING),
        ("shape", 3, _msg("ShapeProto")),
        ("metadata", 7, _msg("OpMetadata")),
        ("literal", 8, _msg("LiteralProto")),
        ("parameter_number", 9, INT64),
        ("tuple_index", 13, INT64),
        ("dimensions", 14, INT64, REPEATED),
        ("slice_dimensions", 17, _msg("SliceDimensions"), REPEATED),
        ("dynamic_slice_sizes", 20, INT64, REPEATED),
        ("padding_config", 21, _msg("PaddingConfig")),
        ("channel_id", 26, INT64),
        ("custom_call_target", 28, STRING),
        ("dot_dimension_numbers", 30, _msg("DotDimensionNumbers")),
        ("gather_dimension_numbers", 33, _msg("GatherDimensionNumbers")),
        ("gather_slice_sizes", 34, INT64, REPEATED),
        ("id", 35, INT64),
        ("operand_ids", 36, INT64, REPEATED),
        ("called_computation_ids", 38, INT64, REPEATED),
        ("backend_config", 43, BYTES),
        ("replica_groups", 49, _msg("ReplicaGroup"), REPEATED),
        ("is_stable", 60, BOOL),
        ("comparison_direction", 63, STRING),
        ("indices_are_sorted", 67, BOOL),
        ("use_global_device_ids", 71, BOOL),
        ("comparison_type", 72, STRING),
        ("custom_call_api_version", 77, INT32),
    ],
    "HloComputationProto": [
        ("name", 1, STRING),
        ("instructions", 2, _msg("HloInstructionProto"), REPEATED),
        ("program_shape", 4, _msg("ProgramShapeProto")),
        ("id", 5, INT64),
        ("root_id", 6, INT64),
    ],
    "AliasEntryProto": [
        ("output_shape_index", 1, INT64, REPEATED),
        ("parameter_number", 2, INT64),
        ("parameter_shape_index", 3, INT64, REPEATED),
        ("kind", 4, ENUM_AS_INT),
    ],
    "HloInputOutputAliasProto": [("entries", 1, _msg("AliasEntryProto"), REPEATED)],
    "HloModuleProto": [
        ("name", 1, STRING),
        ("entry_computation_name", 2, STRING),
        ("computations", 3, _msg("HloComputationProto"), REPEATED),
        ("host_program_shape", 4, _msg("ProgramShapeProto")),
        ("id", 5, INT64),
        ("entry_computation_id", 6, INT64),
        ("input_output_alias", 8, _msg("HloInputOutputAliasProto")),
    ],
}

MUST_ALIAS = 2  # xla.Kind.MUST_ALIAS


def _build_messages() -> dict[str, type]:
    file_proto = descriptor_pb2.FileDescriptorProto(name=f"{_PACKAGE}/hlo.proto", package=_PACKAGE, syntax="proto3")
    for message_name, fields in _SCHEMA.items():
        message = file_proto.message_type.add(name=message_name)
        for name, number, ftype, *flags in fields:
            field = message.field.add(name=name, number=number)
            field.label = _F.LABEL_REPEATED if REPEATED in flags else _F.LABEL_OPTIONAL
            if isinstance(ftype, tuple):
                field.type, field.type_name = ftype[0], f".{_PACKAGE}.{ftype[1]}"
            else:
                field.type = ftype
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")) for name in _SCHEMA}


_MESSAGES = _build_messages()
LayoutProto = _MESSAGES["LayoutProto"]
ShapeProto = _MESSAGES["ShapeProto"]
ProgramShapeProto = _MESSAGES["ProgramShapeProto"]
LiteralProto = _MESSAGES["LiteralProto"]
HloInstructionProto = _MESSAGES["HloInstructionProto"]
HloComputationProto = _MESSAGES["HloComputationProto"]
HloModuleProto = _MESSAGES["HloModuleProto"]
