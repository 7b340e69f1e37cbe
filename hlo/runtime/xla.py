"""The XLA runtime: our HloModuleProtos compiled and run by jaxlib's PJRT clients (CPU, or GPU where jax sees one).

Tensor parallelism uses one device per rank, the module compiled with `num_replicas = tp_degree`; collectives are
XLA's own cross-replica ops. On CPU the devices are virtual (`jax_num_cpu_devices`), so tp_degree=8 runs on a laptop.
Compiled programs are cached by the hash of the module and the compile setting (`artifact_key`): in the process, and
in a store on disk when one is given (`cache_dir`, `use_store`): PJRT serialized executables, or the HLO where PJRT
cannot serialize the executable (PJRT CPU cannot serialize a sort's comparator), compiled when loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from hlo.builder import Module
from hlo.runtime import _jaxlib
from hlo.runtime.base import CompileEvent, DeviceTensor, Program, Runtime, RuntimeInputError, host_arrays
from hlo.types import Shape, dtype_of

log = logging.getLogger(__name__)

# backend -> jax platform. "neuron": NeuronCores through the Neuron PJRT plugin (libneuronxla), used by
# hlo.runtime.neuron's pjrt route; construct it through get_runtime("neuron", ...), which checks tp and core placement.
_PLATFORMS = {"xla-cpu": "cpu", "xla-gpu": "gpu", "neuron": "neuron"}
HLO_SUFFIX = ".hlo.pb"  # a stored program the backend cannot serialize: its HloModuleProto, compiled when loaded


@dataclasses.dataclass(frozen=True)
class _Loaded:
    """A loaded executable and the store file it was read from (None: compiled in this process). Saving it into
    another store copies that file: PJRT CPU serializing an executable it had itself deserialized drops compiled
    kernels (jaxlib 0.10.2: a dynamic-update-slice fusion's code is gone, and the copy fails when run with
    "NOT_FOUND: Function bitcast_dynamic-update-slice_fusion not found"; `tests/hlo/test_runtime.py`), so only an
    executable compiled in this process is ever serialized. The file, not its bytes, is kept: an executable averages
    about 0.7 MB at the 600M shape, a model has up to 159 of them."""
    executable: object
    source: Path | None = None


_EXECUTABLES: dict[str, _Loaded] = {}  # in-process compile cache: key|device ids -> loaded executable


def clear_compile_cache() -> None:
    """Forget every program compiled in this process, for every runtime (stores on disk stay)."""
    _EXECUTABLES.clear()


def host_cpu_features(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> tuple[str, ...]:
    """The host CPU's instruction-set features (x86 `flags`, Arm `Features` of /proc/cpuinfo), sorted; where that file
    is missing, the machine and processor names. XLA CPU compiles for the host's features, so they are part of the key
    of a stored CPU executable: one copied to a CPU without them would die with SIGILL instead of recompiling."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("flags", "Features"):
                return tuple(sorted(set(value.split())))
    except OSError:
        pass
    return (platform.machine(), platform.processor())


# XLA_FLAGS that do not change what a program compiles to: the number of virtual CPU devices (tp is in the key)
_KEY_NEUTRAL_FLAGS = ("--xla_force_host_platform_device_count",)


def compile_flags(xla_flags: str | None = None) -> tuple[str, ...]:
    """The flags of `XLA_FLAGS` (default: this process's environment) that can change compiled code, sorted: part of
    a stored executable's key, so that one compiled with, say, `--xla_cpu_max_isa=AVX2` or another YNNPACK setting
    is not loaded by a process that runs with other flags."""
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    return tuple(sorted(f for f in flags.split() if f.split("=", 1)[0] not in _KEY_NEUTRAL_FLAGS))


def executable_key(module_bytes: bytes, platform_name: str, tp_degree: int, jax_version: str, device_kind: str,
                   cpu_features: Sequence[str] = (), xla_flags: Sequence[str] = ()) -> str:
    """The store key of a compiled XLA program: its HLO, platform, tp, jaxlib, device kind, on CPU the CPU's
    features (`host_cpu_features()`), and the XLA flags it was compiled under (`compile_flags()`)."""
    h = hashlib.sha256(module_bytes)
    h.update(f"|{platform_name}|tp={tp_degree}|jaxlib={jax_version}|{device_kind}".encode())
    if cpu_features:
        h.update(("|cpu=" + " ".join(sorted(cpu_features))).encode())
    if xla_flags:
        h.update(("|flags=" + " ".join(sorted(xla_flags))).encode())
    return h.hexdigest()[:32]


class XlaRuntime(Runtime):
    def __init__(self, backend: str = "xla-cpu", tp_degree: int = 1, cache_dir: str | os.PathLike | None = None,
                 store_executables: bool = True):
        """`cache_dir`: the store (see `use_store`). `store_executables=False` stores every program as its HLO,
        compiled when loaded (for a PJRT plugin whose serialized executables are not to be relied on)."""
        if backend not in _PLATFORMS:
            raise ValueError(f"unknown XLA backend {backend!r}; choose one of {sorted(_PLATFORMS)}")
        if not isinstance(tp_degree, int) or tp_degree < 1:
            raise ValueError(f"tp_degree must be a positive integer, got {tp_degree!r}")
        self.backend, self.platform, self.tp_degree = backend, _PLATFORMS[backend], tp_degree
        if self.platform == "cpu":
            _jaxlib.request_cpu_devices(tp_degree)
        devs = _jaxlib.devices(self.platform)
        if len(devs) < tp_degree:
            hint = (
                "jax started its CPU backend before hlo could ask for more virtual devices (a runtime asks for its "
                "own tp_degree, at least as many as the cores): for runtimes of several tp degrees in one process "
                f"call hlo.runtime.reserve_cpu_devices({tp_degree}) before the first, or create this one before "
                f"other jax work, or set XLA_FLAGS=--xla_force_host_platform_device_count={tp_degree}"
                if self.platform == "cpu" else f"use tp_degree <= {len(devs)} on this machine" + (
                    " (NEURON_RT_VISIBLE_CORES / NEURON_RT_NUM_CORES set how many NeuronCores this process gets)"
                    if self.platform == "neuron" else "")
            )
            raise ValueError(f"tp_degree={tp_degree} needs {tp_degree} {self.platform} devices, "
                             f"but jax sees {len(devs)}: {hint}")
        self.devices = devs[:tp_degree]
        self.replicas = _jaxlib.Replicas(self.devices)
        self._cpu_features = host_cpu_features() if self.platform == "cpu" else ()
        self._xla_flags = compile_flags()   # XLA reads XLA_FLAGS once, when its first backend starts: as it is now
        self.store_executables = store_executables
        self.use_store(cache_dir or None)

    # ------------------------------------------------------------------------------------------------ compile
    def artifact_key(self, module: Module) -> str:
        return executable_key(module.serialize(), self.platform, self.tp_degree, _jaxlib.jax.__version__,
                              str(self.devices[0].device_kind), self._cpu_features, self._xla_flags)

    def versions(self) -> dict[str, str]:
        return _jaxlib.versions()

    def compiled_text(self, program: Program) -> str | None:
        return _jaxlib.optimized_hlo_text(program.executable)

    def clear_cache(self) -> None:
        suffix = "|" + ",".join(str(d.id) for d in self.devices)
        for key in [k for k in _EXECUTABLES if k.endswith(suffix)]:
            _EXECUTABLES.pop(key, None)

    def compile(self, module: Module) -> Program:
        key = self.artifact_key(module)
        memory_key = key + "|" + ",".join(str(d.id) for d in self.devices)
        loaded = _EXECUTABLES.get(memory_key)
        if loaded is None:
            loaded = self._load(module, key)  # from the store
            if loaded is None:
                loaded = _Loaded(self._compile(module, key, CompileEvent.NEW))
                self._persist(module, key, loaded, replace=True)  # new, or replacing an unreadable file
            _EXECUTABLES[memory_key] = loaded
        else:
            self._persist(module, key, loaded)  # compiled or loaded earlier in this process: into this store too
        return Program(self, module, loaded.executable)

    def _compile(self, module: Module, key: str, reason: str):
        start = time.perf_counter()
        try:
            mlir = _jaxlib.to_stablehlo(module.serialize(), len(module.outputs) == 1 and bool(module.aliases))
            executable = _jaxlib.compile_replicated(mlir, self.devices, self.tp_degree)
        except _jaxlib.XlaRuntimeError as e:
            raise RuntimeError(f"XLA could not compile program {module.name!r}: {e}") from e
        seconds = time.perf_counter() - start
        log.info("compiled %s for %s tp=%d in %.2fs", module.name, self.backend, self.tp_degree, seconds)
        self._compiled(CompileEvent(module.name, key, seconds, reason))
        return executable

    def _path(self, key: str, suffix: str = ".pjrt") -> Path:
        return self.store_dir / f"{key}{suffix}"

    def is_stored(self, module: Module) -> bool:
        """Whether the store holds `module`'s program (an executable, or its HLO where the backend cannot
        serialize it)."""
        key = self.artifact_key(module)
        return self.store_dir is not None and (self._path(key).exists() or self._path(key, HLO_SUFFIX).exists())

    def _load(self, module: Module, key: str) -> _Loaded | None:
        if self.store_dir is None:
            return None
        if self._path(key).exists():
            try:
                return _Loaded(_jaxlib.deserialize(self._path(key).read_bytes(), self.devices), self._path(key))
            except Exception as e:  # a stale or foreign file: recompile rather than fail
                log.warning("ignoring unreadable cached executable %s: %s", self._path(key), e)
                return None
        if self._path(key, HLO_SUFFIX).exists():
            log.info("program %s is stored as HLO (%s cannot serialize its executable): compiling it", module.name,
                     self.backend)
            return _Loaded(self._compile(module, key, CompileEvent.STORED_AS_HLO))
        return None

    def _persist(self, module: Module, key: str, loaded: _Loaded, replace: bool = False) -> None:
        if self.store_dir is None:
            return
        if not replace and (self._path(key).exists() or self._path(key, HLO_SUFFIX).exists()):
            return
        if not self.store_executables:
            self._store(key + HLO_SUFFIX, module.serialize())
            return
        if loaded.source is not None:       # loaded from another store: that file, never a re-serialization
            try:
                self._store(key + ".pjrt", loaded.source.read_bytes())
            except OSError as e:              # gone since: the HLO, compiled when loaded
                log.info("program %s: the file it was loaded from is unreadable (%s); storing its HLO", module.name, e)
                self._store(key + HLO_SUFFIX, module.serialize())
            return
        try:
            blob = _jaxlib.serialize(loaded.executable)
        except _jaxlib.XlaRuntimeError as e:
            # e.g. PJRT CPU: "UNIMPLEMENTED: 'LessThan' is not serializable", seen for the sampling head
            log.info("program %s: %s cannot serialize its executable (%s); storing its HLO, compiled when loaded",
                     module.name, self.backend, str(e).splitlines()[0])
            self._store(key + HLO_SUFFIX, module.serialize())
            return
        self._store(key + ".pjrt", blob)

    def _store(self, name: str, blob: bytes) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.store_dir, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, self.store_dir / name)  # atomic: concurrent writers leave one whole file

    # ------------------------------------------------------------------------------------------------- data
    def put(self, value) -> DeviceTensor:
        """Upload a host array to every rank, or a `PerRank` list of arrays one per rank."""
        if isinstance(value, DeviceTensor):
            return value
        arrays = host_arrays("value", value, self.tp_degree)
        shape = Shape(dtype_of(arrays[0]), arrays[0].shape)
        return DeviceTensor(self, self.replicas.put(arrays), shape)

    def as_device(self, name: str, shape: Shape, value):
        if isinstance(value, DeviceTensor):
            if value.runtime is not self and value.runtime.devices != self.devices:
                raise RuntimeInputError(f"input {name!r} lives on other devices than this program")
            if value.shape != shape:
                raise RuntimeInputError(f"input {name!r}: expected {shape}, got a device tensor {value.shape}")
            value._check_alive()
            return value.array
        return self.replicas.put(host_arrays(name, value, self.tp_degree, shape))

    def execute(self, program: Program, arrays: list) -> list:
        avals = [self.replicas.aval(s.dims, s.dtype.numpy) for _, s in program.module.outputs]
        try:
            return self.replicas.execute(program.executable, arrays, avals)
        except _jaxlib.XlaRuntimeError as e:
            raise RuntimeError(f"program {program.name!r} failed on {self.backend}: {e}") from e

    def read(self, tensor: DeviceTensor, rank: int) -> np.ndarray:
        return self.replicas.shard(tensor.array, rank)

    def is_deleted(self, tensor: DeviceTensor) -> bool:
        return tensor.array.is_deleted()

    def wait(self, tensor: DeviceTensor) -> None:
        tensor.array.block_until_ready()
