"""Choosing the backend: neuron where the Neuron SDK and devices are present, else xla-gpu where jax sees a GPU, else
xla-cpu. `NLLB_NEURONX_BACKEND` or an explicit `backend=` overrides."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def select_backend(requested: str | None, tp_degree: int) -> str:
    if requested:
        return requested
    from hlo.runtime import neuron_available, xla_platforms
    if neuron_available():
        return "neuron"
    platforms = xla_platforms(tp_degree)
    if "gpu" in platforms:
        return "xla-gpu"
    log.info("no Neuron SDK or GPU found; using xla-cpu")
    return "xla-cpu"
