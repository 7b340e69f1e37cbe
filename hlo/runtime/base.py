"""The runtime interface: compile a module for `tp_degree` replicas, upload per-rank buffers, run by name.

    runtime = hlo.runtime.get_runtime("xla-cpu", tp_degree=2)
    program = runtime.compile(module)                   # cached by the module's hash
    weights = runtime.put(PerRank([w0, w1]))            # one buffer per rank, uploaded once
    out = program(x=np.ones(...), w=weights)            # named inputs; numpy is copied to every rank
    out["y"].numpy(rank=0)                              # read back only what you ask for

State stays on the device: an output aliased to a parameter (see `hlo.build(aliases=...)`) is that parameter's new
buffer, and the buffer passed in is donated (deleted), so feed the output back in on the next call. A program that
uses `hlo.rank()` has a parameter `hlo.RANK_PARAM`: `run` feeds each rank its number unless the caller gives it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from hlo.builder import RANK_PARAM, Module
from hlo.types import Shape, dtype_of


class RuntimeInputError(ValueError):
    """A program was called with inputs that don't match its parameters."""


@dataclass(frozen=True)
class PerRank:
    """Host arrays, one per rank (a sharded weight, say), to upload as one input."""

    arrays: Sequence[np.ndarray]


class DeviceTensor:
    """One buffer per rank on the runtime's devices, all of the same shape and dtype."""

    def __init__(self, runtime: "Runtime", array, shape: Shape):
        self.runtime = runtime
        self.array = array
        self.shape = shape

    def numpy(self, rank: int = 0) -> np.ndarray:
        """Rank `rank`'s buffer, copied to the host."""
        if not 0 <= rank < self.runtime.tp_degree:
            raise ValueError(f"rank {rank} out of range for tp_degree {self.runtime.tp_degree}")
        self._check_alive()
        return self.runtime.read(self, rank)

    def per_rank(self) -> list[np.ndarray]:
        return [self.numpy(r) for r in range(self.runtime.tp_degree)]

    def wait(self) -> None:
        """Block until the program that produces this tensor has finished (programs run asynchronously)."""
        self._check_alive()
        self.runtime.wait(self)

    @property
    def deleted(self) -> bool:
        return self.runtime.is_deleted(self)

    def _check_alive(self):
        if self.deleted:
            raise RuntimeError("this device buffer was donated to a program that updated it in place; "
                               "use the program's output instead")

    def __repr__(self) -> str:
        return f"DeviceTensor({self.shape}, tp={self.runtime.tp_degree})"


def check_host_array(name: str, shape: Shape, value) -> np.ndarray:
    """`value` as a contiguous array of `shape`'s dtype; a clear error if its shape or kind is wrong."""
    array = np.asarray(value)
    if array.shape != shape.dims:
        raise RuntimeInputError(f"input {name!r}: expected shape {list(shape.dims)} ({shape}), got {list(array.shape)}")
    want = shape.dtype
    got = dtype_of(array) if array.dtype.kind in "biuf" or array.dtype.name == "bfloat16" else None
    if got != want:
        safe = got is not None and (
            (want.is_float and (got.is_float or got.is_int)) or (want.is_int and got.is_int and np.can_cast(
                array.dtype, want.numpy, "same_kind")) or (want.name == "pred" and got.name == "pred"))
        if not safe:
            raise RuntimeInputError(f"input {name!r}: expected element type {want}, got {array.dtype}")
        if want.is_int and array.size and (array.min() < np.iinfo(want.numpy).min or array.max() > np.iinfo(want.numpy).max):
            raise RuntimeInputError(f"input {name!r}: values out of range for {want}")
        array = array.astype(want.numpy)
    return np.asarray(array, order="C")


def host_arrays(name: str, value, tp_degree: int, shape: Shape | None = None) -> list[np.ndarray]:
    """One host array per rank: a `PerRank` list as given, anything else repeated; checked against `shape`."""
    if isinstance(value, PerRank):
        if len(value.arrays) != tp_degree:
            raise RuntimeInputError(f"input {name!r}: {len(value.arrays)} per-rank arrays for tp_degree {tp_degree}")
        arrays = [np.asarray(a, order="C") for a in value.arrays]
        if len({(a.shape, a.dtype) for a in arrays}) != 1:
            raise RuntimeInputError(f"input {name!r}: per-rank arrays differ in shape or dtype")
        return [check_host_array(name, shape, a) for a in arrays] if shape is not None else arrays
    array = np.asarray(value, order="C")
    return [check_host_array(name, shape, array) if shape is not None else array] * tp_degree


class Program:
    """A compiled module, called with its parameters by name; returns its outputs by name as DeviceTensors."""

    def __init__(self, runtime: "Runtime", module: Module, executable):
        self.runtime = runtime
        self.module = module
        self.executable = executable
        self._ranks = None  # each rank's number for hlo.RANK_PARAM, uploaded on first use

    @property
    def name(self) -> str:
        return self.module.name

    def __call__(self, **inputs) -> dict[str, DeviceTensor]:
        return self.run(inputs)

    def run(self, inputs: Mapping[str, object]) -> dict[str, DeviceTensor]:
        return self.bind({}).run(inputs)

    def bind(self, fixed: Mapping[str, DeviceTensor]) -> "BoundProgram":
        """This program with the inputs that stay the same from call to call (weights) checked and converted once:
        only the others are handled per call. (At 600M, 200 weight arguments cost about 1.5 ms per call when each
        is checked again.) Only device tensors the program does not update in place (not aliased) can be bound."""
        return BoundProgram(self, fixed)

    def rank_input(self) -> DeviceTensor:
        """Each rank's number, for `hlo.RANK_PARAM` (uploaded on first use)."""
        if self._ranks is None:
            self._ranks = self.runtime.put(PerRank([np.int32(r) for r in range(self.runtime.tp_degree)]))
        return self._ranks


class BoundProgram:
    """A program with some inputs bound (`Program.bind`): called with the rest by name, or with a bound one again to
    replace it for that call. Holds the bound buffers: a bound device tensor deleted meanwhile fails in the runtime."""

    def __init__(self, program: Program, fixed: Mapping[str, DeviceTensor]):
        spec, module = program.module.params, program.module
        self.program = program
        unknown = [n for n in fixed if n not in spec]
        donated = [n for n in fixed if n in {param for _, param in module.aliases}]
        if unknown or donated:
            raise RuntimeInputError(f"program {program.name!r}: cannot bind " + "; ".join(
                ([f"unknown inputs {unknown}"] if unknown else []) +
                ([f"inputs it updates in place {donated}"] if donated else [])))
        if RANK_PARAM in spec and RANK_PARAM not in fixed:  # a program that uses hlo.rank(): rank r gets r
            fixed = {**fixed, RANK_PARAM: program.rank_input()}
        self._arrays = [program.runtime.as_device(name, shape, fixed[name]) if name in fixed else None
                        for name, shape in spec]
        self._free = {name for name in spec.names if name not in fixed}

    def __call__(self, **inputs) -> dict[str, DeviceTensor]:
        return self.run(inputs)

    def warm_up(self) -> None:
        """Run once on zeros for every input not bound, and wait: the one-time work of a program's first call (on XLA
        CPU about 0.4 s more than later calls for a 600M-shape encoder, measured) then falls here rather than in a
        timed or served call."""
        spec = self.program.module.params
        zeros = {name: np.zeros(shape.dims, shape.dtype.numpy) for name, shape in spec if name in self._free}
        for out in self.run(zeros).values():
            out.wait()

    def run(self, inputs: Mapping[str, object]) -> dict[str, DeviceTensor]:
        program = self.program
        spec, runtime = program.module.params, program.runtime
        missing = [n for n in self._free if n not in inputs]
        extra = [n for n in inputs if n not in spec]
        if missing or extra:
            raise RuntimeInputError(
                f"program {program.name!r}: " + "; ".join(
                    ([f"missing inputs {sorted(missing)}"] if missing else []) +
                    ([f"unknown inputs {extra}"] if extra else [])) + f". Its parameters are {spec.names}")
        arrays = list(self._arrays)
        for index, (name, shape) in enumerate(spec):
            if name in inputs:
                arrays[index] = runtime.as_device(name, shape, inputs[name])
        outs = runtime.execute(program, arrays)
        return {name: DeviceTensor(runtime, arr, shape) for (name, shape), arr in zip(program.module.outputs, outs)}


@dataclass(frozen=True)
class CompileEvent:
    """One real compile by a runtime (not a cache hit): what observers added with `add_compile_observer` receive."""

    program: str                 # the module's name
    key: str                     # its artifact key
    seconds: float
    reason: str                  # NEW (not in memory or in the store) or STORED_AS_HLO (the store holds its HLO only)

    NEW = "new"
    STORED_AS_HLO = "stored as HLO"


class Runtime:
    """A backend with `tp_degree` devices. Subclasses implement compile, upload, execute and read, and keep compiled
    programs in a store on disk: `use_store(directory)` chooses it, `artifact_key(module)` names a program there.

    The store is what `save()` and compiled artifacts are made of: every program compiled while a store is set is
    written to it, and so is one compiled earlier in the process when `compile()` is called for it again. A program
    the backend cannot serialize is stored as its HLO and compiled when loaded (a CompileEvent says so)."""

    backend: str
    tp_degree: int
    store_dir: Path | None = None

    def compile(self, module: Module) -> Program:
        raise NotImplementedError

    def artifact_key(self, module: Module) -> str:
        """The name of `module`'s compiled program in the store: a hash of the HLO and everything the compiled
        program depends on (backend, tp, compiler version, target)."""
        raise NotImplementedError

    def use_store(self, directory: str | os.PathLike | None) -> Path | None:
        """Keep compiled programs in `directory` from now on (None: in memory only); returns the previous one."""
        previous = self.store_dir
        self.store_dir = Path(directory) if directory is not None else None
        return previous

    def clear_cache(self) -> None:
        """Forget the programs compiled in this process for this runtime's devices, as a new process would start
        (the store on disk stays)."""
        raise NotImplementedError

    @property
    def compile_count(self) -> int:
        """Real compiles by this runtime (not in-memory or store hits)."""
        return getattr(self, "_compile_count", 0)

    def add_compile_observer(self, callback: Callable[[CompileEvent], None]) -> None:
        """Call `callback(event)` after each real compile by this runtime."""
        self.__dict__.setdefault("_observers", []).append(callback)

    def _compiled(self, event: CompileEvent) -> None:
        with self.__dict__.setdefault("_count_lock", threading.Lock()):  # compile_all compiles from several threads
            self._compile_count = self.compile_count + 1
        for callback in self.__dict__.get("_observers", ()):
            callback(event)

    def versions(self) -> dict[str, str]:
        """The versions of what compiled programs depend on (for a manifest)."""
        return {}

    def compiled_text(self, program: Program) -> str | None:
        """The HLO text the backend's compiler made of `program` after its own passes (its fusions, the copies it
        inserted), or None where the backend does not show it."""
        return None

    def put(self, value) -> DeviceTensor:
        raise NotImplementedError

    def as_device(self, name: str, shape: Shape, value):
        raise NotImplementedError

    def execute(self, program: Program, arrays: list) -> list:
        raise NotImplementedError

    def read(self, tensor: DeviceTensor, rank: int) -> np.ndarray:
        raise NotImplementedError

    def is_deleted(self, tensor: DeviceTensor) -> bool:
        raise NotImplementedError

    def wait(self, tensor: DeviceTensor) -> None:
        """Block until `tensor` is computed. This default reads rank 0 back, which waits on any runtime; a runtime
        that can wait without the copy overrides it."""
        self.read(tensor, 0)
