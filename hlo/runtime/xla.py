"""The XLA runtime: our HloModuleProtos compiled and run by jaxlib's PJRT clients (CPU, or GPU where jax sees one).

Tensor parallelism uses one device per rank, the module compiled with `num_replicas = tp_degree`; collectives are
XLA's own cross-replica ops. On CPU the devices are virtual (`jax_num_cpu_devices`), so tp_degree=8 runs on a laptop.
Compiled programs are cached by the hash of the module and the compile setting: in the process, and on disk when a
`cache_dir` is given (PJRT serialized executables).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from hlo.builder import Module
from hlo.runtime import _jaxlib
from hlo.runtime.base import DeviceTensor, Program, Runtime, RuntimeInputError, host_arrays
from hlo.types import Shape, dtype_of

log = logging.getLogger(__name__)

# backend -> jax platform. "neuron": NeuronCores through the Neuron PJRT plugin (libneuronxla), used by
# hlo.runtime.neuron's pjrt route; construct it through get_runtime("neuron", ...), which checks tp and core placement.
_PLATFORMS = {"xla-cpu": "cpu", "xla-gpu": "gpu", "neuron": "neuron"}
_EXECUTABLES: dict[str, object] = {}  # in-process compile cache: key -> loaded executable


class XlaRuntime(Runtime):
    def __init__(self, backend: str = "xla-cpu", tp_degree: int = 1, cache_dir: str | os.PathLike | None = None):
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
                "jax started its CPU backend before hlo could ask for more virtual devices: create the runtime "
                f"before other jax work, or set XLA_FLAGS=--xla_force_host_platform_device_count={tp_degree}"
                if self.platform == "cpu" else f"use tp_degree <= {len(devs)} on this machine" + (
                    " (NEURON_RT_VISIBLE_CORES / NEURON_RT_NUM_CORES set how many NeuronCores this process gets)"
                    if self.platform == "neuron" else "")
            )
            raise ValueError(f"tp_degree={tp_degree} needs {tp_degree} {self.platform} devices, "
                             f"but jax sees {len(devs)}: {hint}")
        self.devices = devs[:tp_degree]
        self.replicas = _jaxlib.Replicas(self.devices)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.compile_count = 0  # real compiles by this runtime (not cache hits)

    # ------------------------------------------------------------------------------------------------ compile
    def cache_key(self, module: Module) -> str:
        h = hashlib.sha256(module.serialize())
        h.update(f"|{self.platform}|tp={self.tp_degree}|jaxlib={_jaxlib.jax.__version__}".encode())
        h.update(str(self.devices[0].device_kind).encode())
        return h.hexdigest()[:32]

    def compile(self, module: Module) -> Program:
        key = self.cache_key(module)
        memory_key = key + "|" + ",".join(str(d.id) for d in self.devices)
        executable = _EXECUTABLES.get(memory_key)
        if executable is None:
            executable = self._load(key)  # a readable copy in cache_dir
            if executable is None:
                executable = self._compile(module, key)
                if self.cache_dir is not None:
                    self._store(key, _jaxlib.serialize(executable))  # new, or replacing an unreadable file
            _EXECUTABLES[memory_key] = executable
        elif self.cache_dir is not None and not self._path(key).exists():
            self._store(key, _jaxlib.serialize(executable))  # compiled earlier in this process: persist it too
        return Program(self, module, executable)

    def _compile(self, module: Module, key: str):
        start = time.perf_counter()
        try:
            executable = _jaxlib.compile_replicated(_jaxlib.to_stablehlo(module.serialize()), self.devices,
                                                    self.tp_degree)
        except _jaxlib.XlaRuntimeError as e:
            raise RuntimeError(f"XLA could not compile program {module.name!r}: {e}") from e
        self.compile_count += 1
        log.info("compiled %s for %s tp=%d in %.2fs", module.name, self.backend, self.tp_degree,
                 time.perf_counter() - start)
        return executable

    def _path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.pjrt"

    def _load(self, key: str):
        if self.cache_dir is None or not self._path(key).exists():
            return None
        try:
            return _jaxlib.deserialize(self._path(key).read_bytes(), self.devices)
        except Exception as e:  # a stale or foreign file: recompile rather than fail
            log.warning("ignoring unreadable cached executable %s: %s", self._path(key), e)
            return None

    def _store(self, key: str, blob: bytes) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, self._path(key))  # atomic: concurrent writers leave one whole file

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
