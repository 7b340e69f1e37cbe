"""Reading an HF M2M100/NLLB checkpoint: config.json plus safetensors (single or sharded) or pytorch_model.bin.

Tensors are read one at a time (safetensors is memory-mapped), so loading holds about one copy of the weights.
Names are HF's, with the `model.` prefix removed: `encoder.layers.0.self_attn.q_proj.weight`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

SHARED_NAMES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")


def _canonical(name: str) -> str:
    return name[len("model."):] if name.startswith("model.") else name


class Checkpoint:
    """Lazy access to a checkpoint's tensors by canonical name, as float32 numpy arrays."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(resolve_path(path))
        self.config = read_config(self.path)
        self._sources: dict[str, tuple[str, str]] = {}  # canonical name -> (file, stored name)
        self._torch_state = None
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            for stored, file in weight_map.items():
                self._sources[_canonical(stored)] = (str(self.path / file), stored)
        elif (self.path / "model.safetensors").exists():
            from safetensors import safe_open
            file = str(self.path / "model.safetensors")
            with safe_open(file, "np") as f:
                for stored in f.keys():
                    self._sources[_canonical(stored)] = (file, stored)
        elif (self.path / "pytorch_model.bin").exists():
            from nllb_neuronx.extras import require_torch
            torch = require_torch(f"reading {self.path / 'pytorch_model.bin'} (safetensors checkpoints do not)")
            state = torch.load(self.path / "pytorch_model.bin", map_location="cpu", weights_only=True)
            self._torch_state = {_canonical(k): v for k, v in state.items()}
        else:
            raise FileNotFoundError(
                f"{self.path} holds no weights: expected model.safetensors, model.safetensors.index.json "
                "or pytorch_model.bin")

    def names(self) -> set[str]:
        return set(self._torch_state) if self._torch_state is not None else set(self._sources)

    def get(self, name: str) -> np.ndarray:
        if name in SHARED_NAMES:
            name = next((n for n in SHARED_NAMES if n in self.names()), name)
        if self._torch_state is not None:
            if name not in self._torch_state:
                raise KeyError(name)
            return self._torch_state[name].float().numpy()
        if name not in self._sources:
            raise KeyError(name)
        file, stored = self._sources[name]
        import ml_dtypes  # noqa: F401  (registers numpy's bfloat16, which safetensors' numpy reader names)
        from safetensors import safe_open
        with safe_open(file, "np") as f:  # numpy, not torch: torch's import alone holds about 180 MB
            return np.asarray(f.get_tensor(stored), dtype=np.float32)

    def has(self, name: str) -> bool:
        if name in SHARED_NAMES:
            return any(n in self.names() for n in SHARED_NAMES)
        return name in self.names()


def read_config(path: str | os.PathLike) -> dict:
    config_file = Path(path) / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json: not an HF checkpoint directory")
    return json.loads(config_file.read_text())


def resolve_path(path: str | os.PathLike) -> str:
    """A local directory as is; otherwise an HF hub id, downloaded when this machine can reach a hub."""
    if Path(path).is_dir():
        return str(path)
    if str(path).count("/") <= 1 and not str(path).startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download
            return snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.model", "*.bin"])
        except Exception as e:
            raise FileNotFoundError(f"{path!r} is not a local directory, and the hub could not provide it: {e}") from e
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
