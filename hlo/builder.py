"""The builder: Python functions into HLO modules.

A program is a pure function of named parameters. Its parameters are one ordered `ParamSpec` (name -> Shape); the
function gets them as a `Params` namespace and returns a dict of named outputs. `build()` records what the function
does into a `Module`: computations of instructions (`Value`s), the entry's named parameters and outputs, and the
outputs that update a parameter in place (input/output aliasing, how caches stay on the device).

    spec = ParamSpec(x=f32[4, 8], w=f32[8, 16])
    module = build("matmul", spec, lambda p: {"y": hlo.dot(p.x, p.w)})

The module is plain Python data; `hlo.emit` turns it into an HloModuleProto and `hlo.text` into HLO text.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

from hlo.types import Shape, TupleShape


class HloBuildError(ValueError):
    """A program cannot be built: shapes or dtypes that don't fit, a bad spec, a bad alias."""


class Value:
    """One instruction's result. Ops take Values and return Values; `shape` and `dtype` are known at build time."""

    __slots__ = ("computation", "id", "opcode", "shape", "operands", "attrs", "called", "name")

    def __init__(self, computation, opcode, shape, operands=(), attrs=None, called=(), name=None):
        self.computation = computation
        self.opcode = opcode
        self.shape = shape
        self.operands = tuple(operands)
        self.attrs = attrs or {}
        self.called = tuple(called)
        self.id = computation.module.next_id()
        self.name = name or f"{opcode.replace('-', '_')}.{self.id}"

    @property
    def dtype(self):
        return self.shape.dtype

    @property
    def dims(self) -> tuple[int, ...]:
        return self.shape.dims

    def __repr__(self) -> str:
        return f"<{self.name}: {self.shape}>"

    # Arithmetic sugar; the ops module does the checking.
    def __add__(self, other):
        from hlo import ops
        return ops.add(self, other)

    def __radd__(self, other):
        from hlo import ops
        return ops.add(other, self)

    def __sub__(self, other):
        from hlo import ops
        return ops.subtract(self, other)

    def __rsub__(self, other):
        from hlo import ops
        return ops.subtract(other, self)

    def __mul__(self, other):
        from hlo import ops
        return ops.multiply(self, other)

    def __rmul__(self, other):
        from hlo import ops
        return ops.multiply(other, self)

    def __truediv__(self, other):
        from hlo import ops
        return ops.divide(self, other)

    def __neg__(self):
        from hlo import ops
        return ops.negate(self)


@dataclass(eq=False)
class Computation:
    """A computation: parameters, instructions in dependency order, and a root."""

    module: "ModuleBuilder"
    name: str
    id: int
    instructions: list = field(default_factory=list)
    parameters: list = field(default_factory=list)
    root: Value | None = None

    def add(self, opcode, shape, operands=(), attrs=None, called=(), name=None) -> Value:
        for operand in operands:
            if not isinstance(operand, Value):
                raise HloBuildError(f"{opcode}: operand {operand!r} is not an HLO value")
            if operand.computation is not self:
                raise HloBuildError(
                    f"{opcode}: operand {operand.name} belongs to computation {operand.computation.name!r}, "
                    f"not {self.name!r}"
                )
        value = Value(self, opcode, shape, operands, attrs, called, name)
        self.instructions.append(value)
        return value

    def parameter(self, name: str, shape: Shape) -> Value:
        value = self.add("parameter", shape, attrs={"parameter_number": len(self.parameters)}, name=name)
        self.parameters.append(value)
        return value


# The parameter that carries each rank's number (s32[]), added by `hlo.rank()`; `hlo.runtime` feeds it.
RANK_PARAM = "replica_rank"


class ModuleBuilder:
    """Owns the id counter and every computation of one module, callees before callers."""

    def __init__(self, name: str):
        self.name = name
        self.computations: list[Computation] = []
        self.entry: Computation | None = None
        self._next_id = 1
        self._reducers: dict = {}

    def rank_parameter(self, comp: Computation) -> Value:
        """The entry's `RANK_PARAM` parameter, s32[], added as its last parameter on first use."""
        from hlo.types import s32
        if comp is not self.entry:
            raise HloBuildError(f"hlo.rank() is only available in the program's function, not in {comp.name!r}")
        for param in comp.parameters:
            if param.name == RANK_PARAM:
                if param.shape != s32[()]:
                    raise HloBuildError(f"parameter {RANK_PARAM!r} is reserved for the rank and must be s32[], "
                                        f"got {param.shape}")
                return param
        return comp.parameter(RANK_PARAM, s32[()])

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def computation(self, name: str) -> Computation:
        comp = Computation(self, f"{name}.{self._next_id}", self.next_id())
        return comp

    def finish(self, comp: Computation, root: Value) -> Computation:
        comp.root = root
        self.computations.append(comp)
        return comp

    def subcomputation(self, key, name: str, param_shapes, body: Callable) -> Computation:
        """A called computation (a reducer, a comparator), built once per module and key."""
        if key not in self._reducers:
            comp = self.computation(name)
            params = [comp.parameter(f"{comp.name}.p{i}", s) for i, s in enumerate(param_shapes)]  # module-unique
            with _current(comp):
                root = body(*params)
            self._reducers[key] = self.finish(comp, root)
        return self._reducers[key]


class _Building(threading.local):
    """The computations being built, innermost last: one stack per thread, since programs are built concurrently
    (`compile_all` builds and compiles several at once)."""

    def __init__(self):
        self.stack: list[Computation] = []


_BUILDING = _Building()


@contextlib.contextmanager
def _current(comp: Computation) -> Iterator[Computation]:
    _BUILDING.stack.append(comp)
    try:
        yield comp
    finally:
        _BUILDING.stack.pop()


def current_computation() -> Computation:
    """The computation being built: where ops without operands (constants, iota, replica-id) go."""
    if not _BUILDING.stack:
        raise HloBuildError("no program is being built: call ops inside the function given to hlo.build()")
    return _BUILDING.stack[-1]


class ParamSpec:
    """The one ordered list of a program's named parameters. The host feeds programs by these names."""

    def __init__(self, items: Mapping[str, Shape] | list[tuple[str, Shape]] | None = None, **shapes: Shape):
        entries = list(items.items() if isinstance(items, Mapping) else (items or [])) + list(shapes.items())
        self._shapes: dict[str, Shape] = {}
        for name, shape in entries:
            self.add(name, shape)

    def add(self, name: str, shape: Shape) -> "ParamSpec":
        if not isinstance(name, str) or not name.replace(".", "_").isidentifier():
            raise HloBuildError(f"parameter name {name!r} must be an identifier, dots allowed (e.g. 'fc1.weight')")
        if name in self._shapes:
            raise HloBuildError(f"parameter {name!r} is declared twice")
        if not isinstance(shape, Shape):
            raise HloBuildError(f"parameter {name!r}: {shape!r} is not a shape such as f32[4, 8]")
        self._shapes[name] = shape
        return self

    def __iter__(self):
        return iter(self._shapes.items())

    def __len__(self) -> int:
        return len(self._shapes)

    def __contains__(self, name) -> bool:
        return name in self._shapes

    def __getitem__(self, name: str) -> Shape:
        return self._shapes[name]

    @property
    def names(self) -> list[str]:
        return list(self._shapes)

    def __repr__(self) -> str:
        return "ParamSpec(" + ", ".join(f"{n}={s}" for n, s in self) + ")"


class Params:
    """The parameters as the program function sees them: `p.x` or `p["x"]`."""

    def __init__(self, values: dict[str, Value]):
        self._values = values

    def __getattr__(self, name: str) -> Value:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no parameter named {name!r}; parameters: {', '.join(self._values)}") from None

    __getitem__ = __getattr__

    def __iter__(self):
        return iter(self._values)


@dataclass(frozen=True)
class Module:
    """A built program: computations (callees first, entry last), named parameters and outputs, aliases."""

    name: str
    computations: tuple
    params: ParamSpec
    outputs: tuple  # ((name, Shape), ...), the entry's root tuple in order
    aliases: tuple  # ((output name, parameter name), ...): the output is the in-place update of the parameter

    @property
    def entry(self) -> Computation:
        return self.computations[-1]

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self.outputs]

    def output_shape(self, name: str) -> Shape:
        return dict(self.outputs)[name]

    def to_proto(self):
        from hlo.emit import module_to_proto
        return module_to_proto(self)

    def serialize(self) -> bytes:
        return self.to_proto().SerializeToString(deterministic=True)

    def to_text(self) -> str:
        from hlo.text import module_to_text
        return module_to_text(self)

    def fingerprint(self) -> str:
        import hashlib
        return hashlib.sha256(self.serialize()).hexdigest()


def build(name: str, params: ParamSpec | Mapping[str, Shape], fn: Callable[[Params], Mapping[str, Value]],
          aliases: Mapping[str, str] | None = None) -> Module:
    """Record `fn(params) -> {output name: Value}` into a Module.

    `aliases` maps an output name to the parameter it updates in place (must-alias); the shapes must be equal.
    A program that calls `hlo.rank()` gets one more parameter, `RANK_PARAM` (s32[]), after those of `params`.
    """
    spec = params if isinstance(params, ParamSpec) else ParamSpec(params)
    if not name:
        raise HloBuildError("a module needs a non-empty name")
    builder = ModuleBuilder(name)
    entry = builder.entry = builder.computation(name)
    values = {pname: entry.parameter(pname, shape) for pname, shape in spec}
    with _current(entry):
        result = fn(Params(values))
        if isinstance(result, Value):
            result = {"output": result}
        if not isinstance(result, Mapping) or not result:
            raise HloBuildError(f"{name}: the program function must return a non-empty dict of named outputs")
        for out_name, value in result.items():
            if not isinstance(value, Value) or isinstance(value.shape, TupleShape):
                raise HloBuildError(f"{name}: output {out_name!r} must be an array value, got {value!r}")
            if value.computation is not entry:
                raise HloBuildError(f"{name}: output {out_name!r} was not built in this program")
        from hlo import ops
        root = ops.tuple_(list(result.values()))
    builder.finish(entry, root)
    if len(entry.parameters) > len(spec):  # hlo.rank() added the rank parameter: the caller's spec stays as it was
        spec = ParamSpec(list(spec) + [(v.name, v.shape) for v in entry.parameters[len(spec):]])
    outputs = tuple((out_name, value.shape) for out_name, value in result.items())
    alias_items = tuple((aliases or {}).items())
    for out_name, param_name in alias_items:
        if out_name not in result:
            raise HloBuildError(f"{name}: alias names output {out_name!r}, but outputs are {list(result)}")
        if param_name not in spec:
            raise HloBuildError(f"{name}: alias names parameter {param_name!r}, but parameters are {spec.names}")
        if result[out_name].shape != spec[param_name]:
            raise HloBuildError(
                f"{name}: output {out_name!r} {result[out_name].shape} cannot update parameter {param_name!r} "
                f"{spec[param_name]} in place: the shapes differ"
            )
    if len({p for _, p in alias_items}) != len(alias_items):
        raise HloBuildError(f"{name}: a parameter is aliased by more than one output")
    return Module(name, tuple(builder.computations), spec, outputs, alias_items)
