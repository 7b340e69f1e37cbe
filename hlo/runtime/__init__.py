"""Runtimes that execute HLO modules: `xla-cpu` (default), `xla-gpu`, and `neuron` (see `hlo.runtime.neuron`)."""

from __future__ import annotations

from hlo.runtime.base import BoundProgram, DeviceTensor, PerRank, Program, Runtime, RuntimeInputError

BACKENDS = ("xla-cpu", "xla-gpu", "neuron")


def neuron_available() -> bool:
    """Whether Neuron devices and the SDK of one route are present: the PJRT plugin, or neuronx-cc and torch-neuronx.

    `hlo.runtime.neuron_platform.probe()` says what was found and why a route is unusable."""
    from hlo.runtime.neuron_platform import probe
    return probe().available


def reserve_cpu_devices(count: int) -> None:
    """Ask for `count` virtual XLA CPU devices before anything starts jax's CPU backend: for a process that will make
    XLA CPU runtimes of several tp degrees, up to `count` (the tests). Otherwise each runtime asks for its own
    tp_degree (at least as many as the cores) when jax starts, and a later runtime of a larger tp is refused with
    the fix: XLA's CPU client runs one intra-op thread per device where they outnumber the cores, which slows every
    program there (`_jaxlib.request_cpu_devices`). Called once jax's CPU backend runs with fewer devices, it is an
    error naming them (asking then would change nothing)."""
    from hlo.runtime import _jaxlib
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"reserve_cpu_devices needs a positive number of devices, got {count!r}")
    if _jaxlib.backends_started():
        have = len(_jaxlib.devices("cpu"))
        if have < count:
            raise ValueError(f"jax's CPU backend already runs with {have} devices, fewer than the {count} asked for: "
                             "call reserve_cpu_devices before any runtime or other jax work in this process, or set "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count={count}")
        return
    _jaxlib.request_cpu_devices(count)


def xla_platforms(tp_degree: int = 1) -> list[str]:
    """The XLA platforms jax sees ("cpu", "gpu"); asks for enough virtual CPU devices first."""
    from hlo.runtime import _jaxlib
    _jaxlib.request_cpu_devices(tp_degree)
    return [p for p in ("cpu", "gpu") if _jaxlib.devices(p)]


def xla_hlo_text(module) -> str:
    """XLA's own HLO text of a built `hlo.Module`: XLA parses the serialized proto and prints it (what neuronx-cc and
    XLA tools read; `module.to_text()` is our own rendering). Needs jaxlib, imported here on first use."""
    from hlo.runtime import _jaxlib
    return _jaxlib.hlo_text(module.serialize())


def get_runtime(backend: str = "xla-cpu", tp_degree: int = 1, cache_dir=None) -> Runtime:
    """A runtime for `backend` with `tp_degree` ranks. jaxlib is imported only here, on first use."""
    if backend in ("xla-cpu", "xla-gpu"):
        from hlo.runtime.xla import XlaRuntime
        return XlaRuntime(backend, tp_degree, cache_dir)
    if backend == "neuron":
        from hlo.runtime.neuron import NeuronRuntime
        return NeuronRuntime(tp_degree, cache_dir)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "BoundProgram", "neuron_available", "xla_platforms", "xla_hlo_text", "DeviceTensor", "PerRank",
           "Program", "Runtime", "RuntimeInputError", "get_runtime"]
