"""What a generation engine takes, gives and reports: the contract the server, Ray and the CLI code against.

Two engines keep it: `SlotEngine` (nllb_neuronx/engine.py, continuous batching: slots refilled between decode steps)
and `BatchEngine` (nllb_neuronx/batch_engine.py, one lockstep batch at a time). A request is one line's token ids;
its result is the int64 ids HF `generate()` gives for that line alone: decoder start, the forced language token,
the generated tokens up to and including EOS (or up to `max_new_tokens`, the forced token counted).
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """Draw each token from softmax(logits / temperature) within the `top_k` (0: all) most likely tokens and the
    `top_p` nucleus; `seed` makes the draws reproducible."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One line: source token ids (language tag and EOS included, as the tokenizer gives them), the forced
    target-language token (None: none), the most tokens to generate (the forced token counted, as in HF), greedy
    (`sampling=None`) or sampled, `num_beams` > 1 for beam search."""

    input_ids: Sequence[int]
    forced_bos_token_id: int | None
    max_new_tokens: int
    num_beams: int = 1
    sampling: SamplingParams | None = None


@dataclass(frozen=True)
class EngineStats:
    """A snapshot: batch rows (slots), rows decoding now, requests waiting, and the slot-steps that produced a
    token against all slot-steps run so far."""

    slots: int
    active_slots: int
    queue_depth: int
    useful_slot_steps: int
    slot_steps: int

    @property
    def occupancy(self) -> float:
        return self.useful_slot_steps / self.slot_steps if self.slot_steps else 0.0


class QueueFull(Exception):
    """The engine's queue holds `max_queue` requests already: try again later (a server answers 503)."""


class Engine(Protocol):
    def submit(self, request: GenerationRequest) -> concurrent.futures.Future:
        """Queue one request (thread-safe); the future's result is its ids (np.ndarray int64). `future.cancel()`
        withdraws it and frees its slots. Raises QueueFull when the queue is full, ValueError for a bad request."""

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[np.ndarray]:
        """Every request's ids, in input order, as soon as a prefix is done (waits, never fails, on a full queue)."""

    def stats(self) -> EngineStats:
        ...

    def close(self, drain: bool = True) -> None:
        """Stop taking requests; `drain=True` finishes the queued and running ones, else cancels the queued."""
