"""Every private jax/jaxlib entry point the runtimes use, in one place, so that a jax upgrade touches one file.

Pinned against jax/jaxlib 0.10.2. The route: HloModuleProto bytes -> StableHLO (`hlo_to_stablehlo`) -> PJRT
`compile_and_load` with `num_replicas = tp` -> `execute_sharded` over one buffer per replica.
"""

from __future__ import annotations

import os

import numpy as np

import jax
from jax._src import xla_bridge
from jax._src.lib import _jax
from jax._src.lib import xla_client as xc
from jax.sharding import Mesh, NamedSharding, PartitionSpec

XlaRuntimeError = xc.XlaRuntimeError

# jax 0.7.x has the x64 context manager in jax.experimental; jax 0.8+ has it at the top level.
_enable_x64 = getattr(jax, "enable_x64", None)
if _enable_x64 is None:
    from jax.experimental import enable_x64 as _enable_x64


def versions() -> dict[str, str]:
    import jaxlib
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}


def backends_started() -> bool:
    return bool(xla_bridge._backends)


def request_cpu_devices(count: int) -> None:
    """Ask jax for at least `count` virtual CPU devices (and at least as many as the cores this process may run on,
    or what it was asked for already), if its backends have not started yet. No more: XLA's CPU client runs
    max(devices, cores) intra-op threads, and more threads than cores slow every program (600M shape, batch-1 greedy
    on 2 cores: 76.8 ms a token with 16 devices, 70.6 with 2; its encoder 102 vs 89 ms)."""
    if not backends_started():
        current = jax.config.jax_num_cpu_devices
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        jax.config.update("jax_num_cpu_devices", max(count, cores, current if current > 0 else 0))


def devices(platform: str) -> list:
    try:
        return list(jax.devices(platform))
    except RuntimeError:
        return []


def to_stablehlo(module_bytes: bytes, single_aliased_output: bool = False):
    """StableHLO of serialized HloModuleProto bytes. `single_aliased_output`: the module's one output updates a
    parameter in place. XLA's importer then returns that output as a bare tensor but keeps the alias at output index
    {0} of the tuple it removed, and compiling fails ("Trying to set up alias at {0} which is an invalid index");
    the alias is moved to index {} (the whole result), as jax writes a donated single result."""
    mlir = _jax.mlir.hlo_to_stablehlo(module_bytes)
    if not single_aliased_output:
        return mlir
    from jax._src.interpreters import mlir as jax_mlir
    from jax._src.lib.mlir import ir
    with jax_mlir.make_ir_context():
        text = str(ir.Module.parse(mlir))
    return text.replace("output_index = array<i64: 0>", "output_index = array<i64>", 1)


def compile_replicated(mlir, devs: list, num_replicas: int):
    options = xc.CompileOptions()
    options.num_replicas = num_replicas
    options.num_partitions = 1
    options.device_assignment = xc.DeviceAssignment.create(np.arange(num_replicas).reshape(num_replicas, 1))
    return devs[0].client.compile_and_load(mlir, xc.DeviceList(tuple(devs)), options)


def serialize(executable) -> bytes:
    return executable.client.serialize_executable(executable)


def deserialize(blob: bytes, devs: list):
    return devs[0].client.deserialize_executable(blob, xc.DeviceList(tuple(devs)), None)


class Replicas:
    """Builds and takes apart arrays that hold one buffer per replica (the buffers may differ: per-rank data)."""

    def __init__(self, devs: list):
        self.devices = devs
        self.mesh = Mesh(np.array(devs), ("tp",))
        self.sharding = NamedSharding(self.mesh, PartitionSpec())

    def put(self, arrays: list[np.ndarray]):
        # Wait for the copy: device_put is asynchronous and keeps each host array alive until its copy is done, so
        # a loop of uploads (weights streamed from a checkpoint) would hold many host arrays at once (measured on
        # the 600M shape: peak RSS 3.5 GB while loading without the wait, 2.9 GB with it).
        with _enable_x64(True):  # keep s64/u64/f64 as they are: jax would narrow them to 32 bits
            shards = jax.block_until_ready(jax.device_put(arrays, self.devices))
        return jax.make_array_from_single_device_arrays(arrays[0].shape, self.sharding, shards)

    def execute(self, executable, arguments: list, out_avals: list) -> list:
        results = executable.execute_sharded(arguments)
        handlers = [xc.array_result_handler(aval, self.sharding, True, _skip_checks=True) for aval in out_avals]
        return results.consume_with_handlers(handlers)

    @staticmethod
    def aval(shape, dtype):
        return jax.core.ShapedArray(tuple(shape), dtype)

    def shard(self, array, rank: int) -> np.ndarray:
        device = self.devices[rank]
        return next(np.asarray(s.data) for s in array.addressable_shards if s.device == device)


def hlo_text(module_bytes: bytes) -> str:
    """XLA's own HLO text of serialized HloModuleProto bytes (XLA parses the proto, then prints its module)."""
    return xc.XlaComputation(module_bytes).as_hlo_text()


def optimized_hlo_text(executable) -> str:
    """XLA's HLO of a compiled executable, after its passes (fusions, the copies it inserted)."""
    return "\n".join(module.to_string() for module in executable.hlo_modules())
