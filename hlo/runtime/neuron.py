"""The Neuron runtime: the same HloModuleProtos as on XLA CPU, run on NeuronCores (trn1, inf2, trn2), by one of two
documented routes behind the `Runtime` interface.

- `pjrt`: where the Neuron PJRT plugin (libneuronxla, installed with jax-neuronx) is present, jax sees NeuronCores
  as devices of platform "neuron", and `XlaRuntime("neuron", ...)` runs our modules on them exactly as on CPU: PJRT
  compiles with `num_replicas = tp_degree` (the plugin calls neuronx-cc) and executes one replica per NeuronCore.
  With a `cache_dir`, the plugin's NEFF cache (`NEURON_COMPILE_CACHE_URL`, unless already set) goes under it.
  Programs are stored as their HLO (the plugin's serialized executables are undocumented), compiled again on load
  from the plugin's NEFF cache.
- `aot`: `neuronx-cc` compiles each module to a NEFF ahead of time (`hlo.runtime.neuron_compile`; NEFFs are kept
  with the compiled artifacts, keyed by HLO hash), and torch-neuronx loads and runs it on `tp_degree` NeuronCores.
  This route imports no jax. Each output buffer is allocated once and reused by later calls once its DeviceTensor is
  dropped (transformers-neuronx's ParallelMemory allocates its output buffers once, too).

`HLO_NEURON_ROUTE=pjrt|aot` or `route=` chooses; otherwise pjrt where jax sees Neuron devices, else aot. Before
either starts, the tp degree is checked against the target's supported degrees and the NeuronCores this process
reserves (`NEURON_RT_VISIBLE_CORES` / `NEURON_RT_NUM_CORES`, see `hlo.runtime.neuron_platform`).

Status: written from AWS's documentation and the public sources of transformers-neuronx; NOT run on Neuron hardware.
The AOT execution part (`TorchNeuronxDevice`) uses the classes and ops torch-neuronx registers in
`torch.classes.neuron` / `torch.ops.neuron` (ParallelModel, ParallelTensorSet, _parallel_to_neuron,
_parallel_from_neuron, _parallel_run_neuron), the way transformers-neuronx and optimum-neuron drive them; they are
not in AWS's API reference, so a torch-neuronx release may change them. They are imported only when this route
starts; where torch-neuronx is missing that is a RuntimeError naming what to install.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hlo.builder import Module
from hlo.runtime.base import CompileEvent, DeviceTensor, Program, Runtime, RuntimeInputError, host_arrays
from hlo.runtime.neuron_compile import NeuronCompiler, forget_known_neffs
from hlo.runtime.neuron_platform import (INSTALL_PJRT, INSTALL_TORCH_NEURONX, ROUTE_ENV, TARGET_ENV,
                                         check_core_placement, check_tp_degree, probe, resolve_target)
from hlo.types import Shape, dtype_of

log = logging.getLogger(__name__)

ROUTES = ("pjrt", "aot")
CACHE_URL_ENV = "NEURON_COMPILE_CACHE_URL"   # the Neuron persistent cache of compiled NEFFs


def jax_neuron_devices() -> list:
    """The devices of jax's "neuron" platform (the PJRT plugin), or [] where jax has none."""
    from hlo.runtime import _jaxlib
    _jaxlib.request_cpu_devices(1)  # jax starts every backend at once: keep the usual virtual CPU devices
    return _jaxlib.devices("neuron")


class NeuronRuntime(Runtime):
    """`tp_degree` NeuronCores through the pjrt or the aot route; the methods are the chosen route's."""

    backend = "neuron"

    def __init__(self, tp_degree: int = 1, cache_dir: str | os.PathLike | None = None, *, route: str | None = None,
                 target: str | None = None, optlevel: int | None = None, device=None):
        if not isinstance(tp_degree, int) or tp_degree < 1:
            raise ValueError(f"tp_degree must be a positive integer, got {tp_degree!r}")
        self.tp_degree = tp_degree
        self.target = resolve_target(target)
        found = probe()
        if self.target is not None:
            check_tp_degree(tp_degree, self.target)
        check_core_placement(tp_degree, available=found.cores)
        self.route = route or os.environ.get(ROUTE_ENV, "").strip() or None
        if self.route is not None and self.route not in ROUTES:
            raise ValueError(f"unknown Neuron route {self.route!r}; choose one of {', '.join(ROUTES)}")
        if cache_dir is not None and self.route != "aot":
            set_compile_cache_url(cache_dir)  # before anything asks jax for devices, which starts the plugin
        if self.route is None:
            self.route = self._choose_route(found, device)
        if self.route == "pjrt":
            self._impl = self._start_pjrt(cache_dir)
        else:
            self._impl = AotRuntime(tp_degree, self._aot_target(), cache_dir, optlevel=optlevel, device=device)
        self.devices = getattr(self._impl, "devices", None)
        log.info("neuron runtime: %s route, target %s, tp=%d", self.route, self.target or "unknown", tp_degree)

    def _choose_route(self, found, device) -> str:
        if found.pjrt_plugin is not None and jax_neuron_devices():  # jax only where the plugin is installed
            return "pjrt"
        if device is not None or found.routes.get("aot") is None:
            return "aot"
        pjrt_why = found.routes.get("pjrt") or "jax sees no 'neuron' devices although libneuronxla is installed"
        raise RuntimeError(f"no Neuron route is usable on this machine. PJRT: {pjrt_why}. Ahead-of-time: "
                           f"{found.routes.get('aot')}. Install the Neuron SDK (see the README, \"Running on "
                           "trn1/inf2\"), or run on backend='xla-cpu'")

    def _start_pjrt(self, cache_dir):
        if not jax_neuron_devices():
            raise RuntimeError("the PJRT route needs the Neuron PJRT plugin, but jax sees no 'neuron' devices: "
                               f"install it ({INSTALL_PJRT}) on a trn1/inf2/trn2 instance, check that "
                               "NEURON_RT_VISIBLE_CORES leaves this process NeuronCores, or use HLO_NEURON_ROUTE=aot")
        from hlo.runtime.xla import XlaRuntime
        # The plugin compiles with neuronx-cc itself and keeps NEFFs in its persistent cache (NEURON_COMPILE_CACHE_URL,
        # set next to our store above). Our store keeps each program's HLO: the plugin's support for serialized
        # executables is undocumented, and its NEFF cache makes the compile on load cheap.
        return XlaRuntime("neuron", self.tp_degree, cache_dir, store_executables=False)

    def _aot_target(self) -> str:
        if self.target is None:
            raise ValueError("the ahead-of-time route compiles for a target, and this machine's could not be found "
                             "(no EC2 instance type): pass target= or set "
                             f"{TARGET_ENV}=trn1|trn1n|inf2|trn2")
        return self.target

    # the Runtime interface: the route's
    def compile(self, module: Module) -> Program:
        return self._impl.compile(module)

    def artifact_key(self, module: Module) -> str:
        return self._impl.artifact_key(module)

    @property
    def store_dir(self):
        return self._impl.store_dir

    def use_store(self, directory):
        return self._impl.use_store(directory)

    def clear_cache(self) -> None:
        self._impl.clear_cache()

    def add_compile_observer(self, callback) -> None:
        self._impl.add_compile_observer(callback)

    def versions(self) -> dict[str, str]:
        return self._impl.versions()

    def put(self, value) -> DeviceTensor:
        return self._impl.put(value)

    def as_device(self, name: str, shape: Shape, value):
        return self._impl.as_device(name, shape, value)

    def execute(self, program: Program, arrays: list) -> list:
        return self._impl.execute(program, arrays)

    def read(self, tensor: DeviceTensor, rank: int) -> np.ndarray:
        return self._impl.read(tensor, rank)

    def is_deleted(self, tensor: DeviceTensor) -> bool:
        return self._impl.is_deleted(tensor)

    def wait(self, tensor: DeviceTensor) -> None:
        self._impl.wait(tensor)

    @property
    def compile_count(self) -> int:
        return self._impl.compile_count

    def __repr__(self) -> str:
        return f"NeuronRuntime(route={self.route!r}, target={self.target!r}, tp_degree={self.tp_degree})"


def set_compile_cache_url(cache_dir) -> None:
    """Point the Neuron PJRT plugin's NEFF cache (`NEURON_COMPILE_CACHE_URL`) into `cache_dir`, unless the variable
    is set already. The plugin reads it when it starts, so this must come before jax starts its backends."""
    if os.environ.get(CACHE_URL_ENV):
        return
    import sys
    jax_started = "jax" in sys.modules and _jax_backends_started()
    os.environ[CACHE_URL_ENV] = str(Path(cache_dir) / "neuron-compile-cache")
    if jax_started:
        log.warning("%s=%s was set after jax started its backends: the Neuron plugin keeps the cache it started "
                    "with. Create the neuron runtime before other jax work, or set %s yourself", CACHE_URL_ENV,
                    os.environ[CACHE_URL_ENV], CACHE_URL_ENV)
    else:
        log.info("%s=%s", CACHE_URL_ENV, os.environ[CACHE_URL_ENV])


def _jax_backends_started() -> bool:
    from hlo.runtime import _jaxlib
    return _jaxlib.backends_started()


# ------------------------------------------------------------------------------------------------ the aot route
class _Buffer:
    """One device tensor holding a buffer per rank (a torch-neuronx parallel tensor), or donated. A buffer the
    runtime allocated for an output goes back to its pool when dropped (`release`)."""

    __slots__ = ("handle", "deleted", "pool", "release", "__weakref__")

    def __init__(self, handle, pool: list | None = None):
        self.handle = handle
        self.deleted = False
        self.pool = pool
        self.release = weakref.finalize(self, pool.append, handle) if pool is not None else None

    def donate(self) -> list | None:
        """Give the handle away (to the output that updates it in place); returns the pool it belongs to."""
        self.deleted = True
        if self.release is None or self.release.detach() is None:
            return None
        return self.pool


@dataclass
class _LoadedNeff:
    key: str
    model: object
    input_names: list[str]
    output_names: list[str]


# device -> {(NEFF key, tp): loaded model}: runtimes sharing a device share what it has loaded
_LOADED: "weakref.WeakKeyDictionary[object, dict[tuple, _LoadedNeff]]" = weakref.WeakKeyDictionary()


class AotRuntime(Runtime):
    """NEFFs from neuronx-cc, loaded and run by `device` (default: `TorchNeuronxDevice`) on tp_degree NeuronCores.

    `device` offers load(neff, tp), upload(per-rank arrays) -> handle, download(handle, rank) -> the rank's array,
    and run(model, input handles, output handles, input names, output names, tp), which writes the outputs."""

    backend = "neuron"

    def __init__(self, tp_degree: int, target: str, cache_dir=None, *, optlevel: int | None = None, device=None):
        self.tp_degree, self.target = tp_degree, target
        self.compiler = NeuronCompiler(target, tp_degree, cache_dir, optlevel=optlevel, on_compile=self._neff_built)
        self.compiler.executable()  # neuronx-cc must be there: fail now, not at the first compile
        self.device = device if device is not None else TorchNeuronxDevice()
        self.store_dir = Path(cache_dir) if cache_dir is not None else None
        self._pools: dict[tuple, list] = {}  # (dims, dtype) -> free output buffers (handles)

    def _neff_built(self, name: str, key: str, seconds: float) -> None:
        self._compiled(CompileEvent(name, key, seconds, CompileEvent.NEW))

    @property
    def compile_count(self) -> int:
        return self.compiler.compile_count

    def artifact_key(self, module: Module) -> str:
        return self.compiler.module_key(module)

    def use_store(self, directory):
        previous = super().use_store(directory)
        self.compiler.use_store(directory)
        return previous

    def clear_cache(self) -> None:
        loaded = _LOADED.get(self.device, {})
        for key in [k for k in loaded if k[1] == self.tp_degree]:
            loaded.pop(key, None)
        forget_known_neffs()

    def versions(self) -> dict[str, str]:
        return {"neuronx-cc": self.compiler.version()}

    def compile(self, module: Module) -> Program:
        neff = self.compiler.compile(module)
        loaded_here = _LOADED.setdefault(self.device, {})
        loaded = loaded_here.get((neff.key, self.tp_degree))
        if loaded is None:
            n_out = len(module.outputs)
            # neuronx-cc names an XLA module's parameters input0.. and its tuple elements output0.. (as
            # transformers-neuronx's find_input_names / find_output_names assume)
            loaded = _LoadedNeff(neff.key, self.device.load(neff.read(), self.tp_degree),
                                 [f"input{i}" for i in range(len(module.params))],
                                 [f"output{i}" for i in range(n_out)])
            loaded_here[(neff.key, self.tp_degree)] = loaded
        return Program(self, module, loaded)

    def put(self, value) -> DeviceTensor:
        if isinstance(value, DeviceTensor):
            return value
        arrays = host_arrays("value", value, self.tp_degree)
        return DeviceTensor(self, _Buffer(self.device.upload(arrays)), Shape(dtype_of(arrays[0]), arrays[0].shape))

    def as_device(self, name: str, shape: Shape, value):
        if isinstance(value, DeviceTensor):
            if value.runtime is not self and getattr(value.runtime, "device", None) is not self.device:
                raise RuntimeInputError(f"input {name!r} lives on another runtime's NeuronCores")
            if value.shape != shape:
                raise RuntimeInputError(f"input {name!r}: expected {shape}, got a device tensor {value.shape}")
            value._check_alive()
            return value.array
        return _Buffer(self.device.upload(host_arrays(name, value, self.tp_degree, shape)))

    def _output_buffer(self, shape: Shape) -> tuple[object, list]:
        """A free output buffer of `shape` (allocated the first time only) and the pool it returns to."""
        pool = self._pools.setdefault((shape.dims, shape.dtype.name), [])
        try:
            return pool.pop(), pool
        except IndexError:
            return self.device.upload([np.zeros(shape.dims, shape.dtype.numpy)] * self.tp_degree), pool

    def execute(self, program: Program, arrays: list) -> list:
        module, loaded = program.module, program.executable
        aliases = {module.output_names.index(o): module.params.names.index(p) for o, p in module.aliases}
        outputs = []   # (handle, pool it returns to or None)
        for i, (_, shape) in enumerate(module.outputs):
            if i in aliases:  # updated in place: the output is the parameter's own device buffer
                outputs.append((arrays[aliases[i]].handle, None))
            else:
                outputs.append(self._output_buffer(shape))
        try:
            self.device.run(loaded.model, [a.handle for a in arrays], [h for h, _ in outputs], loaded.input_names,
                            loaded.output_names, self.tp_degree)
        except RuntimeError as e:
            for handle, pool in outputs:
                if pool is not None:
                    pool.append(handle)
            raise RuntimeError(f"program {program.name!r} failed on the NeuronCores ({self.target}, "
                               f"tp={self.tp_degree}): {e}") from e
        for i, p in aliases.items():   # donated: the buffer now belongs to the output
            outputs[i] = (outputs[i][0], arrays[p].donate())
        return [_Buffer(handle, pool) for handle, pool in outputs]

    def read(self, tensor: DeviceTensor, rank: int) -> np.ndarray:
        return self.device.download(tensor.array.handle, rank)

    def is_deleted(self, tensor: DeviceTensor) -> bool:
        return tensor.array.deleted


class TorchNeuronxDevice:
    """NeuronCores through torch-neuronx: load a NEFF on tp ranks, move per-rank tensors, run.

    Written against the classes and ops torch-neuronx registers (libtorchneuron), used the way transformers-neuronx's
    `compiler.ParallelKernel` / `ParallelMemory` and `ops.parallel_*` use them; untested on hardware.
    """

    def __init__(self):
        try:
            import torch
            import torch_neuronx  # noqa: F401  registers torch.classes.neuron and torch.ops.neuron
        except ImportError as e:
            raise RuntimeError(f"the ahead-of-time Neuron route loads NEFFs with torch-neuronx, which cannot be "
                               f"imported here ({e}): install it ({INSTALL_TORCH_NEURONX}) in the Neuron SDK's "
                               "environment, or use the PJRT route (jax-neuronx)") from e
        try:
            self.classes, self.ops = torch.classes.neuron, torch.ops.neuron
            for name in ("ParallelModel", "ParallelTensorSet"):
                getattr(self.classes, name)
        except (AttributeError, RuntimeError) as e:
            raise RuntimeError(f"this torch-neuronx does not provide torch.classes.neuron.ParallelModel / "
                               f"ParallelTensorSet ({e}); install a torch-neuronx of Neuron SDK 2.x") from e
        self.torch = torch

    def load(self, neff: bytes, tp_degree: int):
        # (NEFF, tp, first global NeuronCore, global core count), as transformers-neuronx's ParallelKernel.load
        model = self.classes.ParallelModel(neff, tp_degree, 0, tp_degree)
        model.load()
        return model

    def _to_torch(self, array: np.ndarray):
        if array.dtype.name == "bfloat16":
            return self.torch.from_numpy(array.view(np.uint16).copy()).view(self.torch.bfloat16)
        return self.torch.from_numpy(np.ascontiguousarray(array).copy())

    def upload(self, arrays: list[np.ndarray]):
        return self.ops._parallel_to_neuron([self._to_torch(a) for a in arrays])

    def download(self, handle, rank: int) -> np.ndarray:
        # torch-neuronx registers no op that reads one rank of a parallel tensor (transformers-neuronx reads all
        # ranks with _parallel_from_neuron, or rank 0 alone through ParallelExecutor's return_ranks): all ranks come
        # to the host here and the others are dropped. Untested on hardware.
        tensor = self.ops._parallel_from_neuron(handle)[rank]
        if tensor.dtype == self.torch.bfloat16:
            import ml_dtypes
            return tensor.view(self.torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()

    def run(self, model, inputs: list, outputs: list, input_names: list[str], output_names: list[str],
            tp_degree: int) -> None:
        ins = self.classes.ParallelTensorSet(input_names, tp_degree)
        outs = self.classes.ParallelTensorSet(output_names, tp_degree)
        ins.init()
        outs.init()
        for i, handle in enumerate(inputs):
            ins.add(i, handle)
        for i, handle in enumerate(outputs):
            outs.add(i, handle)
        self.ops._parallel_run_neuron(model, ins, outs)
