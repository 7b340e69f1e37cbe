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
    its own generator seeded with `sampling.seed`. `length_penalty`: beam search's, as HF's (scores of finished
    hypotheses divided by length ** length_penalty)."""

    input_ids: Sequence[int]
    forced_bos_token_id: int | None
    max_new_tokens: int
    num_beams: int = 1
    sampling: SamplingParams | None = None
    length_penalty: float = 1.0


def check_request(request: GenerationRequest, vocab_size: int, compile_config, slots: int) -> np.ndarray:
    """The request's source ids as int32, or a ValueError naming what is wrong and the fix. Both engines check with
    this: `compile_config` the model's `CompileConfig`, `slots` its batch_size (each beam takes one)."""
    longest, limit = compile_config.encoder_buckets[-1], compile_config.max_target_length
    if not isinstance(request.num_beams, (int, np.integer)) or not 1 <= request.num_beams <= slots:
        raise ValueError(f"num_beams must lie in [1, {slots}] (each beam takes one of the batch_size={slots} "
                         f"slots), got {request.num_beams!r}; compile with a larger batch_size for more beams")
    penalty = request.length_penalty
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float, np.number)) or not np.isfinite(penalty):
        raise ValueError(f"length_penalty must be a finite number, got {request.length_penalty!r}")
    sampling = request.sampling
    if sampling is not None:
        if not isinstance(sampling, SamplingParams):
            raise ValueError(f"sampling must be a SamplingParams or None (greedy), got {type(sampling).__name__}")
        if request.num_beams > 1:
            raise ValueError("beam search with sampling is not supported: use num_beams=1 with sampling, or "
                             "sampling=None with beams")
        sampling.check_top_k(compile_config.max_top_k)
    source = np.asarray(request.input_ids)
    if source.ndim != 1 or source.size == 0:
        raise ValueError(f"input_ids must be a non-empty sequence of token ids, got shape {list(source.shape)}")
    if not np.issubdtype(source.dtype, np.integer):
        raise ValueError(f"input_ids must be integer token ids, got {source.dtype}")
    if source.min() < 0 or source.max() >= vocab_size:
        raise ValueError(f"input_ids must lie in [0, {vocab_size}), got {source.min()}..{source.max()}")
    if source.size > longest:
        raise ValueError(f"a source of {source.size} tokens is longer than the largest encoder bucket {longest}; "
                         "split the line or compile with a larger encoder bucket")
    forced = request.forced_bos_token_id
    if forced is not None and not (isinstance(forced, (int, np.integer)) and 0 <= forced < vocab_size):
        raise ValueError(f"forced_bos_token_id must be a token id in [0, {vocab_size}) or None, got {forced!r}")
    if not isinstance(request.max_new_tokens, (int, np.integer)) or not 1 <= request.max_new_tokens <= limit:
        raise ValueError(f"max_new_tokens must lie in [1, {limit}] (the largest decoder bucket), got "
                         f"{request.max_new_tokens!r}; compile with a larger n_positions bucket for more")
    return source.astype(np.int32)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot: slots in all and in use, requests waiting, slot-steps spent (useful: a request's row), and where the
    device time went (encoding new requests against decode steps)."""

    slots: int
    active_slots: int
    queue_depth: int                # requests waiting for a slot (queued, or encoded ahead)
    useful_slot_steps: int
    slot_steps: int
    encoder_calls: int = 0          # device calls that encoded new requests (into slots, or staging rows ahead)
    encoder_seconds: float = 0.0    # wall time in those calls and in copying staged requests into slots, waited for
    steps: int = 0                  # decode steps (one device call each)
    step_seconds: float = 0.0       # wall time in them, the host's bookkeeping of each step included
    resizes: int = 0                # calls that resized the state to what its active slots need (XLA CPU)
    moves: int = 0                  # steps before which requests moved into the long cache segment (XLA CPU)

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
