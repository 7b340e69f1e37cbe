"""The typed records of NLLBForSampling's public hooks: which program (ProgramKey), a program fetched (ProgramEvent),
and how to draw tokens (`Sampling`, the same class as `SamplingParams`)."""

from __future__ import annotations

from dataclasses import dataclass

from nllb_neuronx.sampling import SamplingParams


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


Sampling = SamplingParams  # the one sampling record (nllb_neuronx/sampling.py), under its former name
