"""What a serialized HLO module moves, read from the module itself: the bytes each entry parameter has read from it,
and every collective with its operand and result bytes. A memory-bound program's time is about its bytes read over
the device's bandwidth; this module only counts, it knows nothing of any device or model.

    traffic = hlo.analysis.analyze(module.serialize())     # or the bytes of an exported `.hlo.pb`
    traffic.read_bytes(), traffic.collectives

How a parameter's bytes read are counted (its `ParameterRead.read_bytes`):
- consumed only through `slice`, `dynamic-slice` or `gather` (operand 0): the bytes of what those take out of it,
  at most its own size (an embedding table looked up by a few ids, one layer's slice of a stacked cache);
- updated in place by `dynamic-update-slice` (operand 0): the update's result is the same buffer, so its consumers
  are followed the same way, and the update's bytes are counted as written;
- any other consumer (a dot, an elementwise op, a reshape, a convert, ...) reads the whole parameter;
- a parameter only returned (a `tuple` operand) or not used at all is not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from hlo import proto
from hlo.types import DTYPES

_BYTES = {d.primitive_type: d.numpy.itemsize for d in DTYPES.values() if d.name != "bf16"} | {16: 2}
_NAMES = {d.primitive_type: d.name for d in DTYPES.values()}
_TUPLE = 13
_SLICING = ("slice", "dynamic-slice", "gather")
_IN_PLACE = ("dynamic-update-slice",)
_NOT_A_READ = ("tuple",)
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "all-reduce-start", "all-gather-start", "collective-permute-start")


def shape_bytes(shape) -> int:
    """Bytes of a ShapeProto (a tuple's elements summed)."""
    if shape.element_type == _TUPLE:
        return sum(shape_bytes(s) for s in shape.tuple_shapes)
    if shape.element_type not in _BYTES:
        raise ValueError(f"no byte size known for element type {shape.element_type}")
    return _BYTES[shape.element_type] * prod(shape.dimensions)


@dataclass(frozen=True)
class ParameterRead:
    """One entry parameter: its size, the bytes the module reads of it, the bytes it writes into it in place."""

    index: int
    name: str
    dims: tuple[int, ...]
    dtype: str
    nbytes: int
    read_bytes: int
    written_bytes: int


@dataclass(frozen=True)
class Collective:
    """One collective instruction: its operands' and result's bytes, and the size of its first replica group (None
    when the groups are empty, meaning every replica)."""

    opcode: str
    name: str
    computation: str
    operand_bytes: int
    result_bytes: int
    group_size: int | None


@dataclass
class ModuleTraffic:
    name: str
    parameters: list[ParameterRead] = field(default_factory=list)
    collectives: list[Collective] = field(default_factory=list)

    def read_bytes(self, names=None) -> int:
        """Bytes read of the parameters named (all of them when `names` is None)."""
        return sum(p.read_bytes for p in self.parameters if names is None or p.name in names)

    def collective_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.collectives:
            counts[c.opcode] = counts.get(c.opcode, 0) + 1
        return counts

    def collective_bytes(self) -> dict[str, int]:
        """Operand bytes per collective opcode."""
        out: dict[str, int] = {}
        for c in self.collectives:
            out[c.opcode] = out.get(c.opcode, 0) + c.operand_bytes
        return out


def analyze(module) -> ModuleTraffic:
    """`module`: serialized HloModuleProto bytes (what `Module.serialize()` returns, what `.hlo.pb` files hold) or a
    parsed `hlo.proto.HloModuleProto`."""
    if isinstance(module, (bytes, bytearray)):
        module = proto.HloModuleProto.FromString(bytes(module))
    entry = next((c for c in module.computations if c.id == module.entry_computation_id), None)
    if entry is None:
        raise ValueError(f"module {module.name!r} has no entry computation {module.entry_computation_id}")
    traffic = ModuleTraffic(module.name)
    by_id = {i.id: i for i in entry.instructions}
    users: dict[int, list] = {}
    for inst in entry.instructions:
        for operand in inst.operand_ids:
            users.setdefault(operand, []).append(inst)
    params = sorted((i for i in entry.instructions if i.opcode == "parameter"), key=lambda i: i.parameter_number)
    for p in params:
        nbytes = shape_bytes(p.shape)
        read, written = _reads(p, users, by_id)
        traffic.parameters.append(ParameterRead(
            p.parameter_number, p.name, tuple(p.shape.dimensions), _NAMES.get(p.shape.element_type, "?"), nbytes,
            min(read, nbytes), written))
    for computation in module.computations:
        ids = {i.id: i for i in computation.instructions}
        for inst in computation.instructions:
            if inst.opcode in COLLECTIVES:
                groups = inst.replica_groups
                traffic.collectives.append(Collective(
                    inst.opcode, inst.name, computation.name,
                    sum(shape_bytes(ids[o].shape) for o in inst.operand_ids), shape_bytes(inst.shape),
                    len(groups[0].replica_ids) if groups else None))
    return traffic


def analyze_file(path) -> ModuleTraffic:
    return analyze(Path(path).read_bytes())


def _reads(param, users: dict, by_id: dict) -> tuple[int, int]:
    """(bytes read, bytes written in place) of one parameter's buffer, by the rules in the module docstring."""
    read = written = 0
    whole = False
    buffer = [param]                      # the parameter and its in-place updates: one buffer
    while buffer:
        value = buffer.pop()
        for user in users.get(value.id, ()):
            first = user.operand_ids[0] == value.id
            if first and user.opcode in _SLICING:
                read += shape_bytes(user.shape)
            elif first and user.opcode in _IN_PLACE:
                written += shape_bytes(by_id[user.operand_ids[1]].shape)
                buffer.append(user)
            elif user.opcode in _NOT_A_READ:
                continue
            else:
                whole = True
    return (shape_bytes(param.shape) if whole else read), written
