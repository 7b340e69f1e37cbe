"""What a Neuron machine offers and what fits on it: targets, tensor-parallel degrees, device memory, NeuronCore
placement (`NEURON_RT_VISIBLE_CORES` / `NEURON_RT_NUM_CORES`), and a probe of the SDK pieces each route needs.

Standard library only: importing this module starts neither jax nor the Neuron SDK, so backend selection and
`nllb-neuronx info` can call it on any machine.

    check_fit(weight_bytes, cache_bytes, tp_degree=8, target="inf2")   # ValueError naming the problem and the fix
    probe().routes                                                      # {"pjrt": None | why not, "aot": ...}

Numbers, from AWS's Neuron documentation:
- trn1/trn1n: Trainium, 2 NeuronCore-v2 and 32 GiB of device memory per device, so 16 GiB per core.
- inf2: Inferentia2, 2 NeuronCore-v2 and 32 GiB per device, so 16 GiB per core.
- trn2: Trainium2, 8 physical NeuronCore-v3 and 96 GiB per device. With the default logical NeuronCore config
  (`NEURON_LOGICAL_NC_CONFIG=2`) the runtime exposes 4 logical cores of 24 GiB; with 1, 8 cores of 12 GiB.
- Tensor-parallel degrees: trn1 1, 2, 8, 16, 32 and inf2 1, 2, 4, 8, 24 (the degrees transformers-neuronx supports
  there); trn2 1, 2, 4, 8, 16, 32, 64 (powers of two up to the 64 logical cores of a trn2.48xlarge; our choice).
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)

GiB = 1 << 30

# Device nodes the Neuron driver creates, one per Neuron device; a module attribute so tests can point it elsewhere.
DEVICE_GLOB = "/dev/neuron*"
# On EC2 (Nitro) the DMI product name is the instance type, e.g. "trn1.32xlarge".
INSTANCE_TYPE_FILE = "/sys/devices/virtual/dmi/id/product_name"
NO_DEVICES = "no Neuron devices (/dev/neuron*): not a trn1/inf2/trn2 instance, or the Neuron driver is not loaded"

TARGET_ENV = "HLO_NEURON_TARGET"          # trn1 | trn1n | inf2 | trn2: overrides what the instance type says
ROUTE_ENV = "HLO_NEURON_ROUTE"            # pjrt | aot: overrides the automatic choice
LNC_ENV = "NEURON_LOGICAL_NC_CONFIG"      # trn2: physical cores per logical core (runtime setting)
VISIBLE_CORES_ENV = "NEURON_RT_VISIBLE_CORES"
NUM_CORES_ENV = "NEURON_RT_NUM_CORES"

NEURON_PIP = "--extra-index-url=https://pip.repos.neuron.amazonaws.com"
INSTALL_PJRT = f"pip install 'jax-neuronx[stable]' {NEURON_PIP}"
INSTALL_COMPILER = f"pip install 'neuronx-cc==2.*' {NEURON_PIP}"
INSTALL_TORCH_NEURONX = f"pip install 'torch-neuronx==2.9.*' 'neuronx-cc==2.*' {NEURON_PIP}"  # XLA-based, inf2/trn1


@dataclass(frozen=True)
class TargetSpec:
    name: str
    core: str                       # what one NeuronCore the runtime exposes is
    tp_degrees: tuple[int, ...]     # supported tensor-parallel degrees
    core_memory: int                # device memory per exposed NeuronCore, bytes
    cores_per_device: int           # exposed NeuronCores per /dev/neuronN


TARGETS: dict[str, TargetSpec] = {
    "trn1": TargetSpec("trn1", "NeuronCore-v2", (1, 2, 8, 16, 32), 16 * GiB, 2),
    "trn1n": TargetSpec("trn1n", "NeuronCore-v2", (1, 2, 8, 16, 32), 16 * GiB, 2),
    "inf2": TargetSpec("inf2", "NeuronCore-v2", (1, 2, 4, 8, 24), 16 * GiB, 2),
    "trn2": TargetSpec("trn2", "logical NeuronCore-v3 (LNC=2)", (1, 2, 4, 8, 16, 32, 64), 24 * GiB, 4),
}


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def target_spec(target: str, env: Mapping[str, str] | None = None) -> TargetSpec:
    """The spec of `target` (trn1, trn1n, inf2, trn2); on trn2, per the logical NeuronCore config in the environment."""
    if target not in TARGETS:
        raise ValueError(f"unknown Neuron target {target!r}; choose one of {', '.join(TARGETS)}")
    spec = TARGETS[target]
    if target == "trn2":
        lnc = _env(env).get(LNC_ENV, "").strip() or "2"
        if lnc not in ("1", "2"):
            raise ValueError(f"{LNC_ENV}={lnc!r}: trn2 supports a logical NeuronCore config of 1 or 2")
        if lnc == "1":
            spec = TargetSpec("trn2", "NeuronCore-v3 (LNC=1)", (1, 2, 4, 8, 16, 32, 64, 128), 12 * GiB, 8)
    return spec


def instance_type(path: str | os.PathLike | None = None) -> str | None:
    """The EC2 instance type ("inf2.xlarge"), or None where it cannot be read."""
    try:
        text = Path(path or INSTANCE_TYPE_FILE).read_text().strip()
    except OSError:
        return None
    return text or None


def target_from_instance_type(itype: str | None) -> str | None:
    """"trn1.32xlarge" -> "trn1", "trn1n.32xlarge" -> "trn1n", "inf2.48xlarge" -> "inf2", "trn2.48xlarge" -> "trn2"."""
    if not itype:
        return None
    family = itype.split(".", 1)[0].lower()
    if family in TARGETS:
        return family
    if family.startswith("trn2"):  # trn2u (UltraServer) and the like
        return "trn2"
    return None


def resolve_target(target: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The compile target: `target` if given, else `HLO_NEURON_TARGET`, else this instance's family, else None."""
    chosen = target or _env(env).get(TARGET_ENV, "").strip() or None
    if chosen is not None:
        target_spec(chosen, env)  # validates
        return chosen
    return target_from_instance_type(instance_type())


# ------------------------------------------------------------------------------------------------ tp and memory
def check_tp_degree(tp_degree: int, target: str, env: Mapping[str, str] | None = None) -> None:
    """ValueError unless `tp_degree` is one of the degrees `target` supports."""
    spec = target_spec(target, env)
    if tp_degree in spec.tp_degrees:
        return
    larger = [d for d in spec.tp_degrees if d > tp_degree]
    hint = f"use tp_degree={larger[0]}" if larger else f"use at most tp_degree={spec.tp_degrees[-1]}"
    raise ValueError(f"tp_degree={tp_degree} is not supported on {target}: supported degrees are "
                     f"{', '.join(map(str, spec.tp_degrees))}; {hint}")


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def check_memory(weight_bytes: int, cache_bytes: int, tp_degree: int, target: str,
                 env: Mapping[str, str] | None = None) -> int:
    """ValueError unless weights + caches < (device memory per NeuronCore) x tp_degree; returns bytes per core.

    `weight_bytes` and `cache_bytes` are totals over all ranks: the sum of what every rank holds (a replicated
    tensor counts once per rank). The check is the plain sum against the cores' memory; the runtime, the programs'
    own buffers and activations need some of it too, so a fit within a few percent may still fail to load.
    """
    if weight_bytes < 0 or cache_bytes < 0:
        raise ValueError(f"byte counts must be non-negative, got weights={weight_bytes}, caches={cache_bytes}")
    spec = target_spec(target, env)
    total = int(weight_bytes) + int(cache_bytes)
    budget = spec.core_memory * tp_degree
    if total < budget:
        return -(-total // tp_degree)
    fits = [d for d in spec.tp_degrees if total < spec.core_memory * d]
    fix = (f"use tp_degree={fits[0]} ({fits[0]} x {_gib(spec.core_memory)}), " if fits else
           f"no supported tp_degree on {target} holds it (at most {spec.tp_degrees[-1]}); ")
    raise ValueError(
        f"weights ({_gib(weight_bytes)}) + caches ({_gib(cache_bytes)}) = {_gib(total)} do not fit in "
        f"{tp_degree} x {_gib(spec.core_memory)} of {target} {spec.core} memory ({_gib(budget)}): {fix}"
        "or make the caches smaller (smaller batch, shorter buckets) or the weights 16-bit")


def check_fit(weight_bytes: int, cache_bytes: int, tp_degree: int, target: str | None = None,
              env: Mapping[str, str] | None = None) -> str | None:
    """The tp check and the memory check for `target` (resolved as `resolve_target` does); returns the target.

    Where no target is given and none can be found (not an EC2 Neuron instance, no `HLO_NEURON_TARGET`), nothing is
    checked and a warning says so.
    """
    target = resolve_target(target, env)
    if target is None:
        log.warning("cannot check tp_degree and device memory: the Neuron target is unknown; set %s=trn1|inf2|trn2",
                    TARGET_ENV)
        return None
    check_tp_degree(tp_degree, target, env)
    check_memory(weight_bytes, cache_bytes, tp_degree, target, env)
    return target


# ----------------------------------------------------------------------------------------------- core placement
def parse_visible_cores(value: str) -> list[int]:
    """`NEURON_RT_VISIBLE_CORES`: a core index ("3") or an inclusive range ("0-7"); comma lists of those accepted."""
    cores: list[int] = []
    try:
        for part in value.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi or lo < 0:
                    raise ValueError
                cores += range(lo, hi + 1)
            else:
                core = int(part)
                if core < 0:
                    raise ValueError
                cores.append(core)
    except ValueError:
        raise ValueError(f"{VISIBLE_CORES_ENV}={value!r} is not a NeuronCore index or an inclusive range such as "
                         "0-7") from None
    if len(set(cores)) != len(cores):
        raise ValueError(f"{VISIBLE_CORES_ENV}={value!r} names a NeuronCore more than once")
    return cores


@dataclass(frozen=True)
class CorePlacement:
    """The NeuronCores this process asks the Neuron runtime for."""

    visible: tuple[int, ...] | None     # NEURON_RT_VISIBLE_CORES, parsed
    num_cores: int | None               # NEURON_RT_NUM_CORES (0 or unset: all)

    @property
    def count(self) -> int | None:
        """How many cores the runtime reserves for this process; None: all cores of the instance."""
        if self.visible is not None:
            return len(self.visible)
        return self.num_cores or None

    def describe(self) -> str:
        if self.visible is not None:
            return f"{VISIBLE_CORES_ENV}={_ranges(self.visible)} ({len(self.visible)} cores)"
        if self.num_cores:
            return f"{NUM_CORES_ENV}={self.num_cores}"
        return f"all NeuronCores of the instance (neither {VISIBLE_CORES_ENV} nor {NUM_CORES_ENV} is set)"


def _ranges(cores) -> str:
    cores = sorted(cores)
    if cores == list(range(cores[0], cores[-1] + 1)):
        return str(cores[0]) if len(cores) == 1 else f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


def core_placement(env: Mapping[str, str] | None = None) -> CorePlacement:
    env = _env(env)
    visible_text = env.get(VISIBLE_CORES_ENV, "").strip()
    num_text = env.get(NUM_CORES_ENV, "").strip()
    visible = tuple(parse_visible_cores(visible_text)) if visible_text else None
    num = None
    if num_text:
        try:
            num = int(num_text)
            if num < 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"{NUM_CORES_ENV}={num_text!r} is not a number of NeuronCores (0 means all)") from None
    return CorePlacement(visible, num)


def check_core_placement(tp_degree: int, env: Mapping[str, str] | None = None,
                         available: int | None = None) -> CorePlacement:
    """ValueError unless the cores this process reserves hold `tp_degree` ranks; logs cores reserved but unused.

    `available`: NeuronCores on the instance where known. As documented for the Neuron runtime,
    `NEURON_RT_VISIBLE_CORES` takes precedence over `NEURON_RT_NUM_CORES`, and every core it names is reserved for
    this process.
    """
    env = _env(env)
    placement = core_placement(env)
    if placement.visible is not None and placement.num_cores:
        log.info("%s is set, so %s=%d is ignored (the Neuron runtime gives %s precedence)", VISIBLE_CORES_ENV,
                 NUM_CORES_ENV, placement.num_cores, VISIBLE_CORES_ENV)
    have = placement.count
    if have is not None and have < tp_degree:
        if placement.visible is not None:
            start = min(placement.visible)
            fix = f"set {VISIBLE_CORES_ENV}={start}-{start + tp_degree - 1}"
        else:
            fix = f"set {NUM_CORES_ENV}={tp_degree}"
        raise ValueError(f"tp_degree={tp_degree} needs {tp_degree} NeuronCores, but {placement.describe()} gives "
                         f"this process {have}: {fix}, or lower tp_degree")
    if available is not None:
        if placement.visible is not None and max(placement.visible) >= available:
            raise ValueError(f"{VISIBLE_CORES_ENV}={_ranges(placement.visible)} names NeuronCore "
                             f"{max(placement.visible)}, but this instance has {available} (0-{available - 1})")
        if tp_degree > available:
            raise ValueError(f"tp_degree={tp_degree} needs {tp_degree} NeuronCores, but this instance has "
                             f"{available}: lower tp_degree or use a larger instance")
    if have is not None and have > tp_degree:
        log.warning("%s reserves %d NeuronCores for this process, which uses %d; the other %d stay unusable by other "
                    "processes until it exits", placement.describe(), have, tp_degree, have - tp_degree)
    elif have is None:
        log.info("the Neuron runtime reserves all NeuronCores for this process; set %s (e.g. 0-%d) to leave the "
                 "others to other models", VISIBLE_CORES_ENV, tp_degree - 1)
    return placement


# ------------------------------------------------------------------------------------------------------- probe
def neuron_devices() -> list[str]:
    return sorted(glob.glob(DEVICE_GLOB))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class NeuronProbe:
    """What this machine has for Neuron, found without importing the SDK; `routes` says why a route is unusable."""

    devices: list[str]
    compiler: str | None                 # neuronx-cc on PATH
    compiler_version: str | None         # of the neuronx-cc pip package, where that is how it was installed
    pjrt_plugin: str | None              # libneuronxla version (the PJRT plugin), if installed
    jax_neuronx: str | None
    torch_neuronx: str | None            # version, or "installed" where it imports but has no metadata
    target: str | None
    instance_type: str | None
    placement: CorePlacement | None
    placement_error: str | None = None
    routes: dict[str, str | None] = field(default_factory=dict)   # route -> None (usable) or why not

    @property
    def available(self) -> bool:
        return any(reason is None for reason in self.routes.values())

    @property
    def reason(self) -> str:
        """Why no route is usable ("" where one is)."""
        if self.available:
            return ""
        if not self.devices:
            return NO_DEVICES
        return "; ".join(f"{name} route: {why}" for name, why in self.routes.items())

    def report(self, jax_neuron_devices: int | None = None) -> list[str]:
        """Lines for `info`: what was found, and for each route whether it is usable or why not."""
        cores = self.cores
        if self.devices:
            shown = ", ".join(self.devices[:4]) + (" ..." if len(self.devices) > 4 else "")
            devices = f"{len(self.devices)} ({shown})" + (f", {cores} NeuronCores" if cores else "")
        else:
            devices = f"none ({DEVICE_GLOB})"
        compiler = ("not on PATH" if self.compiler is None else
                    self.compiler + (f" (neuronx-cc {self.compiler_version})" if self.compiler_version else ""))
        plugin = "not installed" if self.pjrt_plugin is None else f"libneuronxla {self.pjrt_plugin}"
        if self.jax_neuronx:
            plugin += f", jax-neuronx {self.jax_neuronx}"
        if jax_neuron_devices is not None:
            plugin += f"; jax sees {jax_neuron_devices} 'neuron' devices"
        target = self.target or f"unknown (set {TARGET_ENV}=trn1|inf2|trn2)"
        if self.instance_type:
            target += f", instance {self.instance_type}"
        placement = self.placement.describe() if self.placement is not None else f"invalid: {self.placement_error}"
        lines = [f"Neuron devices: {devices}",
                 f"Neuron target: {target}",
                 f"NeuronCores for this process: {placement}",
                 f"Neuron PJRT plugin: {plugin}",
                 f"neuronx-cc: {compiler}",
                 f"torch-neuronx: {self.torch_neuronx or 'not installed'}"]
        for route, why in self.routes.items():
            lines.append(f"Neuron route {route}: " + ("available" if why is None else f"unavailable: {why}"))
        return lines

    @property
    def cores(self) -> int | None:
        """NeuronCores on the instance: device count x cores per device, where the target is known."""
        if not self.devices or self.target is None:
            return None
        try:
            return len(self.devices) * target_spec(self.target).cores_per_device
        except ValueError:
            return None


def probe(env: Mapping[str, str] | None = None) -> NeuronProbe:
    env = _env(env)
    devices = neuron_devices()
    compiler = shutil.which("neuronx-cc", path=env.get("PATH"))
    plugin = _version("libneuronxla") or ("installed" if _importable("libneuronxla") else None)
    torch_nx = (_version("torch-neuronx") or "installed") if _importable("torch_neuronx") else None
    itype = instance_type()
    try:
        target = resolve_target(None, env)
    except ValueError as e:
        target, target_error = None, str(e)
    else:
        target_error = None
    try:
        placement, placement_error = core_placement(env), None
    except ValueError as e:
        placement, placement_error = None, str(e)

    pjrt, aot = [], []
    if not devices:
        pjrt.append(NO_DEVICES)
        aot.append(NO_DEVICES)
    if plugin is None:
        pjrt.append(f"the Neuron PJRT plugin (libneuronxla) is not installed: {INSTALL_PJRT}")
    if compiler is None:
        aot.append(f"neuronx-cc is not on PATH: {INSTALL_COMPILER}")
    if torch_nx is None:
        aot.append(f"torch-neuronx is not installed: {INSTALL_TORCH_NEURONX}")
    if target is None:
        found_as = f"instance type {itype!r} is not a Neuron one" if itype else "no EC2 instance type found"
        aot.append(target_error or f"the compile target is unknown ({found_as}): set {TARGET_ENV}=trn1|inf2|trn2")
    routes = {"pjrt": "; ".join(pjrt) or None, "aot": "; ".join(aot) or None}
    return NeuronProbe(devices, compiler, _version("neuronx-cc"), plugin, _version("jax-neuronx"), torch_nx, target,
                       itype, placement, placement_error, routes)
