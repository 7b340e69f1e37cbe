"""What `sample()` does when the caller does not say: the checkpoint's `generation_config.json`, read as HF reads it.

HF's `generate()` takes its defaults from that file; for an encoder-decoder model `max_length` counts the decoder
start token, so it allows `max_length - 1` new tokens (the forced language token among them), and `max_new_tokens`
wins over it. Without either HF generates 20 new tokens (its default max_length, 20, counted after the
prompt: `GenerationMixin._prepare_generated_length`). `eos_token_id` may be a list: a row stops at any of them. Read with
json, not transformers' GenerationConfig, so greedy decoding keeps transformers out of the process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nllb_neuronx.config import ModelConfig

HF_DEFAULT_MAX_LENGTH = 20  # transformers' GenerationConfig.max_length when nothing sets it


@dataclass(frozen=True)
class GenerationDefaults:
    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    decoder_start_token_id: int
    pad_token_id: int
    forced_bos_token_id: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"generation_config.json allows {self.max_new_tokens} new tokens; at least 1 is needed")
        if not self.eos_token_ids:
            raise ValueError("generation_config.json: eos_token_id must name at least one token")

    @classmethod
    def read(cls, checkpoint_dir, model: ModelConfig) -> "GenerationDefaults":
        """From `checkpoint_dir/generation_config.json` where present, else (or with `checkpoint_dir` None) from the
        model config alone."""
        path = Path(checkpoint_dir or ".") / "generation_config.json"
        try:
            c = json.loads(path.read_text()) if checkpoint_dir is not None and path.exists() else {}
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not readable JSON: {e}") from None

        def token(name: str, fallback):
            value = c.get(name)
            if value is None:
                return fallback
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{path}: {name} must be a token id, got {value!r}")
            return value

        eos = c.get("eos_token_id", model.eos_token_id)
        eos = [model.eos_token_id] if eos is None else eos if isinstance(eos, list) else [eos]
        if not all(isinstance(e, int) and not isinstance(e, bool) for e in eos):
            raise ValueError(f"{path}: eos_token_id must be a token id or a list of them, got {eos!r}")
        if c.get("max_new_tokens") is not None:
            max_new = int(c["max_new_tokens"])
        elif c.get("max_length"):
            max_new = int(c["max_length"]) - 1
        else:  # HF's "model-agnostic default": max_length 20 counted after the prompt (the decoder start), 20 new
            max_new = HF_DEFAULT_MAX_LENGTH
        return cls(max_new_tokens=max_new, eos_token_ids=tuple(eos),
                   decoder_start_token_id=token("decoder_start_token_id", model.decoder_start_token_id),
                   pad_token_id=token("pad_token_id", model.pad_token_id),
                   forced_bos_token_id=token("forced_bos_token_id", None))
