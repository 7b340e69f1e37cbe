"""The typed records of NLLBForSampling's public hooks: which program (ProgramKey), a program fetched (ProgramEvent),
and how to draw tokens (Sampling)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProgramKey:
    """One program of a model: the encoder or the reorder program of a source bucket, or a decoder program (its
    token-choice head "greedy", "sample" or "logits", the tokens it takes per call, its target bucket) for a source
    bucket."""

    kind: str                   # "encoder", "reorder" or "decoder"
    source_len: int
    head: str = ""
    new_tokens: int = 0
    target_len: int = 0


@dataclass(frozen=True)
class ProgramEvent:
    """What `add_program_observer` callbacks receive: a program this model fetched for the first time, and the
    seconds it took (HLO build and serialization, then an XLA compile or a load from the caches)."""

    key: ProgramKey
    seconds: float


class Sampling:
    """How `next_tokens` draws: softmax(logits / temperature) within the `top_k` (0: all) most likely tokens and the
    `top_p` nucleus, with uniform numbers from a generator seeded with `seed` (one per row and step)."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None):
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        if top_k < 0:
            raise ValueError(f"top_k must be 0 (no limit) or positive, got {top_k}")
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.rng = np.random.default_rng(seed)
