"""The slot engine's public types: requests, sampling parameters, statistics, errors (`engine.py` runs them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from nllb_neuronx.sampling import SamplingParams


class QueueFull(RuntimeError):
    """The engine's request queue holds `max_queue` requests already: retry later, or use `generate()`, which waits."""


class EngineClosed(RuntimeError):
    """The engine was closed: it accepts no more requests."""


@dataclass(frozen=True)
class GenerationRequest:
    """One line to translate. `input_ids`: source ids as the tokenizer gives them (language code ... </s>), no
    padding. `forced_bos_token_id`: the target language token (None: the model chooses its first token).
    `sampling`: None for greedy (or beam search with `num_beams` > 1), else how this request's tokens are drawn, from
    its own generator seeded with `sampling.seed`."""

    input_ids: Sequence[int]
    forced_bos_token_id: int | None
    max_new_tokens: int
    num_beams: int = 1
    sampling: SamplingParams | None = None


@dataclass(frozen=True)
class EngineStats:
    """A snapshot: slots in all and in use, requests waiting, and slot-steps spent (useful: a request's row)."""

    slots: int
    active_slots: int
    queue_depth: int
    useful_slot_steps: int
    slot_steps: int

    @property
    def occupancy(self) -> float:
        """Useful slot-steps / all slot-steps (0.0 before the first step)."""
        return self.useful_slot_steps / self.slot_steps if self.slot_steps else 0.0
