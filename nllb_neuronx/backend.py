"""Choosing the backend: neuron where the Neuron SDK and devices are present, else xla-gpu where jax sees a GPU, else
xla-cpu. `NLLB_NEURONX_BACKEND` or an explicit `backend=` overrides."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def select_backend(requested: str | None, tp_degree: int) -> str:
    if requested:
        return requested
    from hlo.runtime import xla_platforms
    from hlo.runtime.neuron_platform import probe
    found = probe()
    if found.available:
        return "neuron"
    fallback = "xla-gpu" if "gpu" in xla_platforms(tp_degree) else "xla-cpu"
    log.info("using %s: the neuron backend is unavailable (%s)%s", fallback, found.reason,
             "" if fallback == "xla-gpu" else "; and jax sees no GPU")
    return fallback
