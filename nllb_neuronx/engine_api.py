"""The slot engine's public types: requests, sampling parameters, statistics, errors (`engine.py` runs them)."""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

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


class Engine(Protocol):
    """What the server, the CLI and Ray code against: SlotEngine (engine.py, continuous batching) and BatchEngine
    (batch_engine.py, one lockstep batch at a time) both keep it. A result is the int64 ids HF generate() gives for
    that line alone."""

    def submit(self, request: GenerationRequest) -> concurrent.futures.Future:
        """Queue one request (thread-safe). A bad request fails its future with ValueError (NotImplementedError for
        what the engine does not do); `future.cancel()` withdraws it and frees its slots. Raises QueueFull when the
        queue is full, EngineClosed after close()."""

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[np.ndarray]:
        """Every request's ids, in input order, as soon as a prefix is done (waits on a full queue, never fails)."""

    def stats(self) -> EngineStats:
        ...

    def close(self, drain: bool = True) -> None:
        """Stop taking requests; `drain=True` finishes the queued and running ones, else cancels them."""
