"""Optional dependencies: torch comes with the `hf` extra (`pip install 'nllb_neuronx[hf]'`).

Greedy and sampled decoding from safetensors checkpoints need neither torch nor transformers' models; HF `generate()`
through the adapter (beam search, logits processors), `pytorch_model.bin` checkpoints and the demo's reference do.
"""

from __future__ import annotations

HF_EXTRA = "pip install 'nllb_neuronx[hf]'"


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require_torch(purpose: str):
    """The torch module, or a MissingExtraError saying that `purpose` needs it and how to install it."""
    try:
        import torch
    except ImportError as e:
        raise MissingExtraError(f"{purpose} needs torch, which is not installed here ({e}): {HF_EXTRA} "
                                "(on inf2/trn1, torch-neuronx brings its own torch; keep that one)") from e
    return torch
