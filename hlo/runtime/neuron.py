"""The Neuron runtime: the same HloModuleProtos as on XLA CPU, run on NeuronCores (trn1, inf2, trn2), by one of two
documented routes behind the `Runtime` interface.

- `pjrt`: where the Neuron PJRT plugin (libneuronxla, installed with jax-neuronx) is present, jax sees NeuronCores
  as devices of platform "neuron", and `XlaRuntime("neuron", ...)` runs our modules on them exactly as on CPU: PJRT
  compiles with `num_replicas = tp_degree` (the plugin calls neuronx-cc) and executes one replica per NeuronCore.
  With a `cache_dir`, the plugin's NEFF cache (`NEURON_COMPILE_CACHE_URL`, unless already set) goes under it.
- `aot`: `neuronx-cc` compiles each module to a NEFF ahead of time (`hlo.runtime.neuron_compile`; NEFFs are kept
  with the compiled artifacts, keyed by HLO hash), and torch-neuronx loads and runs it on `tp_degree` NeuronCores.

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
from hlo.runtime.base import DeviceTensor, Program, Runtime, RuntimeInputError, host_arrays
from hlo.runtime.neuron_compile import NeuronCompiler
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
        if self.route is None:
            self.route = self._choose_route(found, device)
        if self.route == "pjrt":
            self._impl = self._start_pjrt(cache_dir)
        else:
            self._impl = AotRuntime(tp_degree, self._aot_target(), cache_dir, optlevel=optlevel, device=device)
        self.devices = getattr(self._impl, "devices", None)
        log.info("neuron runtime: %s route, target %s, tp=%d", self.route, self.target or "unknown", tp_degree)

    def _choose_route(self, found, device) -> str:
        if jax_neuron_devices():
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
        if cache_dir is not None and not os.environ.get(CACHE_URL_ENV):
            # The plugin compiles with neuronx-cc itself and keeps the NEFFs in the Neuron persistent cache; put that
            # next to our other compiled artifacts. PJRT executables are not serialized to disk on this route: the
            # plugin's support for that is undocumented, and its NEFF cache already makes a restart cheap.
            os.environ[CACHE_URL_ENV] = str(Path(cache_dir) / "neuron-compile-cache")
            log.info("%s=%s", CACHE_URL_ENV, os.environ[CACHE_URL_ENV])
        return XlaRuntime("neuron", self.tp_degree, None)

    def _aot_target(self) -> str:
        if self.target is None:
            raise ValueError("the ahead-of-time route compiles for a target, and this machine's could not be found "
                             "(no EC2 instance type): pass target= or set "
                             f"{TARGET_ENV}=trn1|trn1n|inf2|trn2")
        return self.target

    # the Runtime interface: the route's
    def compile(self, module: Module) -> Program:
        return self._impl.compile(module)

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

    @property
    def compile_count(self) -> int:
        return self._impl.compile_count

    def __repr__(self) -> str:
        return f"NeuronRuntime(route={self.route!r}, target={self.target!r}, tp_degree={self.tp_degree})"


# ------------------------------------------------------------------------------------------------ the aot route
class _Buffer:
    """One device tensor holding a buffer per rank (a torch-neuronx parallel tensor), or donated."""

    __slots__ = ("handle", "deleted")

    def __init__(self, handle):
        self.handle = handle
        self.deleted = False


@dataclass
class _LoadedNeff:
    key: str
    model: object
    input_names: list[str]
    output_names: list[str]


# device -> {(NEFF key, tp): loaded model}: runtimes sharing a device share what it has loaded
_LOADED: "weakref.WeakKeyDictionary[object, dict[tuple, _LoadedNeff]]" = weakref.WeakKeyDictionary()


class AotRuntime(Runtime):
    """NEFFs from neuronx-cc, loaded and run by `device` (default: `TorchNeuronxDevice`) on tp_degree NeuronCores."""

    backend = "neuron"

    def __init__(self, tp_degree: int, target: str, cache_dir=None, *, optlevel: int | None = None, device=None):
        self.tp_degree, self.target = tp_degree, target
        self.compiler = NeuronCompiler(target, tp_degree, cache_dir, optlevel=optlevel)
        self.compiler.executable()  # neuronx-cc must be there: fail now, not at the first compile
        self.device = device if device is not None else TorchNeuronxDevice()

    @property
    def compile_count(self) -> int:
        return self.compiler.compile_count

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

    def execute(self, program: Program, arrays: list) -> list:
        module, loaded = program.module, program.executable
        aliases = {module.output_names.index(o): module.params.names.index(p) for o, p in module.aliases}
        outputs = []
        for i, (_, shape) in enumerate(module.outputs):
            if i in aliases:  # updated in place: the output is the parameter's own device buffer
                outputs.append(arrays[aliases[i]].handle)
            else:
                outputs.append(self.device.upload([np.zeros(shape.dims, shape.dtype.numpy)] * self.tp_degree))
        try:
            self.device.run(loaded.model, [a.handle for a in arrays], outputs, loaded.input_names,
                            loaded.output_names, self.tp_degree)
        except RuntimeError as e:
            raise RuntimeError(f"program {program.name!r} failed on the NeuronCores ({self.target}, "
                               f"tp={self.tp_degree}): {e}") from e
        for p in aliases.values():
            arrays[p].deleted = True  # donated: its buffer now belongs to the output
        return [_Buffer(h) for h in outputs]

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
        model = self.classes.ParallelModel(neff, tp_degree)
        model.load()
        return model

    def _to_torch(self, array: np.ndarray):
        if array.dtype.name == "bfloat16":
            return self.torch.from_numpy(array.view(np.uint16).copy()).view(self.torch.bfloat16)
        return self.torch.from_numpy(np.ascontiguousarray(array).copy())

    def upload(self, arrays: list[np.ndarray]):
        return self.ops._parallel_to_neuron([self._to_torch(a) for a in arrays])

    def download(self, handle, rank: int) -> np.ndarray:
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
