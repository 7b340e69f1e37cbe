"""The slot engine: continuous batching over the model's B batch rows ("slots"), each row its own request.

    engine = SlotEngine(model)                       # model: an NLLBForSampling after to_neuron()
    future = engine.submit(GenerationRequest(ids, forced_bos_token_id=fra, max_new_tokens=64))
    ids = future.result()                            # laid out like HF generate() for that one line
    for ids in engine.generate(requests): ...        # streaming, in input order, bounded read-ahead
    engine.close()

A background thread runs the loop while there is work: between decode steps it admits queued requests into free slots
(the slot encoder encodes them, grouped by source bucket, up to B at a time into staging rows ahead of need, and a
copy program writes one's cross-attention K/V into a slot as it frees: `encode_ahead`), steps
every active slot once (each at its own position), and retires a slot when its request produces EOS or reaches
max_new_tokens, handing the result to its future at once. A new request's first step feeds the decoder start token
at position 0; with a forced target-language token, that step's choice is replaced by it, as HF's forced-BOS logits
processor does. Slot bookkeeping follows vLLM's scheduler: a free list, FIFO admission, retire then refill; or, with
`admission="longest_first"`, the queued request with the longest source first (a corpus's long lines then start
early instead of running alone at the end: the longest-processing-time-first rule for a batch of jobs).
Beam search: a request's beams take `num_beams` slots (admitted when that many are free, in increasing slot order);
while one is active the step runs the beam head (`beam_head.py`): the device takes log_softmax, the forced token,
the running scores and each request's best 2 x num_beams continuations over all its beams, and returns only those
(scores, tokens, source beams) plus the greedy token of the other slots, so greedy requests share the step;
`beam.py` keeps HF's finished-hypotheses bookkeeping on them, and the slot reorder program moves the caches.
Sampling: while a sampling request is active the step runs the sample head with one setting per slot (greedy slots
at temperature 0, which is the greedy head's token exactly) and one uniform number per slot from that request's own
generator (seeded with its `seed`), so a request's draws do not depend on its slot or on the other requests. Beam
and sampling requests do not share steps (one head per step): the queue's head waits until the other kind is done.

Thread-safety: `submit`, `stats`, `close` and futures' `cancel` may be called from any thread; only the loop thread
touches the device. Invalid requests fail their own future with a ValueError; a failed device call fails the requests
in flight (not the queued ones) and the engine carries on with a fresh state.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from nllb_neuronx.beam import BeamSearch
from nllb_neuronx.engine_api import (EngineClosed, EngineStats, GenerationRequest, QueueFull, SamplingParams,
                                     check_request)
from nllb_neuronx.sampling import head_inputs
from nllb_neuronx.slot_state import SlotState

__all__ = ["EngineClosed", "EngineStats", "GenerationRequest", "QueueFull", "SamplingParams", "SlotEngine"]

log = logging.getLogger(__name__)
READ_AHEAD_PER_SLOT = 64   # generate()'s default read-ahead: results are small, idle slots are not
ADMISSIONS = ("fifo", "longest_first")


@dataclass(eq=False)
class _Job:
    """A request in the engine: its checked source, its future, and (once admitted) its slot's progress."""

    source: np.ndarray                  # s32 source ids
    forced: int | None
    max_new_tokens: int
    future: Future
    num_beams: int = 1
    length_penalty: float = 1.0
    generated: list[int] = field(default_factory=list)
    position: int = 0                   # tokens fed so far = the position of the next token fed
    bucket: int = 0                     # source bucket it was encoded at
    slots: list[int] = field(default_factory=list)       # its slots: one, or one per beam
    staged: StagedRow | None = None                      # where it waits once encoded ahead (encode_ahead)
    beams: BeamSearch | None = None
    sampling: SamplingParams | None = None
    rng: np.random.Generator | None = None          # the request's own generator (sampling only)

    def finish(self, start: int) -> None:
        if self.future.set_running_or_notify_cancel():
            ids = self.beams.result() if self.beams is not None else np.array([start, *self.generated], np.int64)
            self.future.set_result(ids)

    def fail(self, error: BaseException) -> None:
        if self.future.set_running_or_notify_cancel():
            self.future.set_exception(error)


class SlotEngine:
    """`admit_batch`: admit queued requests only once that many slots are free (or the queue holds fewer, or no slot
    is busy), so the slot encoder runs on sub-batches rather than one row at a time: an encoder call costs about as
    much for 2-4 rows as for one where it is bound by reading its weights, at the price of slots idling a few steps.
    1 (the default) admits as soon as any slot frees.

    `admission`: which queued request takes a free slot. "fifo" (the default): the oldest, as a server wants.
    "longest_first": the one with the longest source (ties: the oldest), for translating a corpus: a long line
    admitted last would run on alone while the other slots idle. A request can wait while longer ones keep
    arriving, so use it where the input is bounded (`generate()`'s read-ahead window is).

    `encode_ahead` (the default): when a slot frees and no request encoded ahead waits for it, encode up to B
    queued requests at once (`admission`'s order, one slot-encoder call per source bucket) into staging rows, and
    copy each into a slot as slots free (`SlotState.stage`, `insert_staged`). An encoder call for one row costs about
    what it costs for several where the encoder is bound by reading its weights, and on XLA CPU one row ran at half
    the rate of eight (benchmarks/RESULTS.md), so a busy engine encodes in sub-batches without idling slots. On XLA
    CPU the sub-batch is encoded at the finer `ProgramShapes.stage_lengths`. The price: device memory for B more rows
    of cross-attention K/V at the largest source bucket (on XLA CPU a staging area per source bucket, each at its
    bucket), and the first request of a burst waits for its sub-batch's encoder call. Off: each request is encoded
    straight into its slot when one frees (and `admit_batch` may group them).

    `long_slots`: how many slots (the last ones) keep their self-attention caches in the long segment
    (`slot_segments.py`; None: `default_long_rows`, a quarter of them on XLA CPU, none elsewhere). Before each step
    the engine moves the furthest single-row request of the short segment into the long one where that lowers the
    short segment's target bucket (swapping it with a long slot's shorter request, or into a free long slot), so a
    few long rows do not make every row's attention read their length."""

    def __init__(self, model, max_queue: int | None = None, admit_batch: int = 1, admission: str = "fifo",
                 encode_ahead: bool = True, long_slots: int | None = None):
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be a positive number of requests or None (no limit), got {max_queue}")
        if not isinstance(admit_batch, int) or not 1 <= admit_batch <= model.batch_size:
            raise ValueError(f"admit_batch must be an integer from 1 to the batch size {model.batch_size}, "
                             f"got {admit_batch!r}")
        if admission not in ADMISSIONS:
            raise ValueError(f"admission must be one of {ADMISSIONS}, got {admission!r}")
        if not isinstance(encode_ahead, bool):
            raise ValueError(f"encode_ahead must be True or False, got {encode_ahead!r}")
        if long_slots is not None and (isinstance(long_slots, bool) or not isinstance(long_slots, int)
                                       or not 0 <= long_slots < model.batch_size):
            raise ValueError(f"long_slots must be None (the backend's default) or an integer from 0 to "
                             f"{model.batch_size - 1} (slots kept in the long cache segment), got {long_slots!r}")
        self._admit_batch, self._admission, self._encode_ahead = admit_batch, admission, encode_ahead
        self._state = SlotState(model, long_slots)     # checks that the model is on the device
        self._config, self._compile = model.config, model.compile_config
        self._max_queue = max_queue
        self._slots: list[_Job | None] = [None] * model.batch_size
        self._queue: collections.deque[_Job] = collections.deque()
        self._staged: collections.deque[_Job] = collections.deque()   # encoded ahead, in admission order
        self._cond = threading.Condition()
        self._closed = False
        self._cancelled = False                                        # a future was cancelled (`_note_cancel`)
        self._useful_slot_steps = self._slot_steps = self._moves = 0
        self._time = {"encoder_calls": 0, "encoder_seconds": 0.0, "steps": 0, "step_seconds": 0.0}
        self._thread = threading.Thread(target=self._loop, name="nllb-slot-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------------ public
    def submit(self, request: GenerationRequest) -> Future:
        """Queue one request; its future's result is the ids laid out like HF generate() for that line alone
        (decoder start, forced token, generated tokens up to and including EOS, no padding). `cancel()` on the
        future frees its slot. Raises QueueFull when `max_queue` requests wait already."""
        return self._submit(request, block=False)

    def generate(self, requests: Iterable[GenerationRequest], read_ahead: int | None = None) -> Iterator[np.ndarray]:
        """Results in input order, as soon as a prefix is complete. At most `read_ahead` requests (default:
        READ_AHEAD_PER_SLOT x the slots) are in the engine or waiting for an earlier line at once, so memory stays
        bounded whatever the input's length; the default is large because a long line at the head of the output
        holds back every later result: with 4x the slots, one line that ran to its limit left the other slots idle
        (occupancy 0.61 on the 600M corpus benchmark, RESULTS.md). A failed request raises its error here; requests
        not yet handed back when the iterator is closed are cancelled."""
        window = read_ahead or READ_AHEAD_PER_SLOT * len(self._slots)
        pending: collections.deque[Future] = collections.deque()
        try:
            for request in requests:
                pending.append(self._submit(request, block=True))
                while len(pending) >= window or (pending and pending[0].done()):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    @property
    def admit_batch(self) -> int:
        return self._admit_batch

    @property
    def admission(self) -> str:
        return self._admission

    @property
    def encode_ahead(self) -> bool:
        return self._encode_ahead

    @property
    def long_slots(self) -> int:
        return self._state.long_rows

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(slots=len(self._slots), active_slots=sum(job is not None for job in self._slots),
                               queue_depth=len(self._queue) + len(self._staged),
                               useful_slot_steps=self._useful_slot_steps, slot_steps=self._slot_steps,
                               resizes=self._state.resizes, moves=self._moves, **self._time)

    def close(self, drain: bool = True) -> None:
        """Stop accepting requests; finish the queued and active ones (`drain`), or cancel them. Waits for the loop."""
        with self._cond:
            self._closed = True
            if not drain:
                for job in [*self._queue, *self._staged, *(j for j in self._slots if j is not None)]:
                    job.future.cancel()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> "SlotEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ intake
    def _submit(self, request: GenerationRequest, block: bool) -> Future:
        future: Future = Future()
        try:
            job = self._check(request, future)
        except (ValueError, TypeError, NotImplementedError) as error:
            future.set_running_or_notify_cancel()
            future.set_exception(error)
            return future
        eos = self._config.eos_token_id
        if job.num_beams == 1 and job.forced is not None and (job.max_new_tokens == 1 or job.forced == eos):
            job.generated.append(job.forced)        # nothing to decode: HF's result is [start, forced]
            job.finish(self._config.decoder_start_token_id)
            return future
        with self._cond:
            while True:
                if self._closed:
                    raise EngineClosed("the engine is closed; create a new SlotEngine")
                waiting = len(self._queue) + len(self._staged)             # encoded ahead: still waiting
                if self._max_queue is None or waiting < self._max_queue:
                    break
                if not block:
                    raise QueueFull(f"{waiting} requests are queued already (max_queue={self._max_queue})")
                self._cond.wait()
            future.add_done_callback(self._note_cancel)
            self._queue.append(job)
            self._cond.notify_all()
        return future

    def _note_cancel(self, future: Future) -> None:
        if future.cancelled():
            self._cancelled = True            # the loop drops cancelled jobs before its next step

    def _check(self, request: GenerationRequest, future: Future) -> _Job:
        """The request as a job, or a ValueError naming what is wrong with it and the fix."""
        source = check_request(request, self._config.vocab_size, self._compile, len(self._slots))
        forced, sampling = request.forced_bos_token_id, request.sampling
        return _Job(source, None if forced is None else int(forced), int(request.max_new_tokens),
                    future, int(request.num_beams), float(request.length_penalty), sampling=sampling,
                    rng=None if sampling is None else sampling.generator())

    # -------------------------------------------------------------------------------------------------- loop
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting() and not self._busy() and not self._closed:
                    self._cond.wait()
                if self._closed and not self._waiting() and not self._busy():
                    return
                self._drop_cancelled()
                to_stage = self._take_staging() if self._encode_ahead else []
                if not to_stage:
                    admitted = self._take_admissions()
                self._cond.notify_all()                           # the queue has room again
            try:
                started = time.perf_counter()
                encoder_calls = 0
                if to_stage:                 # encode ahead, then admit from the staged requests
                    encoder_calls = self._stage(to_stage)
                    with self._cond:
                        admitted = self._take_admissions()
                encoder_calls += self._admit(admitted)
                if encoder_calls or admitted:
                    self._state.wait()        # so encoder_seconds is the encoder's time, not its dispatch's
                encoded = time.perf_counter()
                stepped = self._busy()
                if stepped:
                    self._step()
                with self._cond:
                    self._time["encoder_calls"] += encoder_calls
                    self._time["encoder_seconds"] += encoded - started
                    self._time["steps"] += stepped
                    self._time["step_seconds"] += time.perf_counter() - encoded
            except Exception as error:                            # a failed device call: fail what is in flight
                log.exception("slot engine: a device call failed; failing the requests in flight")
                self._fail_in_flight(error)

    def _busy(self) -> bool:
        return any(job is not None for job in self._slots)

    def _waiting(self) -> bool:
        return bool(self._queue or self._staged)

    def _drop_cancelled(self) -> None:
        if not self._cancelled:               # nothing cancelled since the last pass: no walk over the queue
            return
        self._cancelled = False
        self._queue = collections.deque(j for j in self._queue if not j.future.cancelled())
        self._staged = collections.deque(j for j in self._staged if not j.future.cancelled())
        for slot, job in enumerate(self._slots):
            if job is not None and job.future.cancelled():
                self._slots[slot] = None

    def _next_queued(self) -> _Job:
        """The queued job the admission policy takes next."""
        if self._admission == "fifo":
            return self._queue[0]
        return max(self._queue, key=lambda job: len(job.source))         # the first of the longest

    def _take_staging(self) -> list[_Job]:
        """Queued jobs to encode ahead, in the admission policy's order, as many as the staging rows hold (B in all):
        only when the jobs encoded ahead already cannot fill the free slots."""
        free = sum(job is None for job in self._slots)
        if not self._queue or sum(j.num_beams for j in self._staged) >= free:
            return []
        taken = []
        while self._queue and len(self._staged) + len(taken) < len(self._slots):
            job = self._next_queued()
            self._queue.remove(job)
            taken.append(job)
        self._staged.extend(taken)
        return taken

    def _take_admissions(self) -> list[_Job]:
        """Waiting jobs (encoded ahead, or queued) for the free slots in the admission policy's order (a request with
        beams waits for as many free slots, and for the sampling requests to finish; a sampling request waits for the
        beam requests); their slots are taken."""
        pool = self._staged if self._encode_ahead else self._queue
        free = [slot for slot, job in enumerate(self._slots) if job is None]
        active = [job for job in self._slots if job is not None]
        if active and len(free) < self._admit_batch and sum(j.num_beams for j in pool) >= self._admit_batch:
            return []
        beams, sampling = any(j.num_beams > 1 for j in active), any(j.sampling is not None for j in active)
        admitted = []
        while pool:
            job = pool[0] if self._encode_ahead else self._next_queued()   # the staged are in admission order
            if len(free) < job.num_beams or (job.num_beams > 1 and sampling) or (job.sampling is not None and beams):
                break
            beams, sampling = beams or job.num_beams > 1, sampling or job.sampling is not None
            pool.remove(job)
            job.slots, free = free[: job.num_beams], free[job.num_beams:]
            for slot in job.slots:
                self._slots[slot] = job
            admitted.append(job)
        return admitted

    def _by_bucket(self, jobs: list[_Job]) -> list[list[_Job]]:
        groups: dict[int, list[_Job]] = collections.defaultdict(list)
        for job in jobs:
            groups[self._compile.encoder_bucket(len(job.source))].append(job)
        return list(groups.values())

    def _stage(self, jobs: list[_Job]) -> int:
        """Encode `jobs` into staging rows, one slot-encoder call per source bucket; returns the calls."""
        groups = self._by_bucket(jobs)
        for group in groups:
            held = [job.staged for job in self._staged if job.staged is not None]
            for job, staged in zip(group, self._state.stage([job.source for job in group], held)):
                job.staged, job.bucket = staged, staged.bucket
        return len(groups)

    def _admit(self, admitted: list[_Job]) -> int:
        """Put the admitted jobs into their slots (a beam request into each of its slots): copied from their
        staging rows (encode_ahead), or encoded, one slot-encoder call per source bucket; returns the encoder
        calls."""
        if self._encode_ahead:
            for job in admitted:
                self._state.insert_staged(job.staged, job.slots)
            groups = []
        else:
            groups = self._by_bucket(admitted)
            for group in groups:
                bucket = self._state.insert([slot for job in group for slot in job.slots],
                                            [job.source for job in group for _ in job.slots])
                for job in group:
                    job.bucket = bucket
        c = self._config
        for job in admitted:
            job.position, job.generated = 0, []
            if job.num_beams > 1:
                job.beams = BeamSearch(job.num_beams, job.max_new_tokens, c.decoder_start_token_id,
                                       c.eos_token_id, c.pad_token_id, job.forced, job.length_penalty)
        return len(groups)

    def _step(self) -> None:
        b, pad = len(self._slots), self._config.pad_token_id
        start, eos = self._config.decoder_start_token_id, self._config.eos_token_id
        tokens, positions, active = np.full(b, pad, np.int64), np.zeros(b, np.int64), np.zeros(b, bool)
        jobs = list({id(job): job for job in self._slots if job is not None}.values())
        for job in jobs:
            if job.beams is not None:
                tokens[job.slots] = job.beams.tokens()
            else:
                tokens[job.slots] = job.generated[-1] if job.generated else start
            positions[job.slots], active[job.slots] = job.position, True
        source_len = max(job.bucket for job in jobs)
        candidates = None
        if any(job.beams is not None for job in jobs):               # the beam head: candidates + greedy tokens
            out = self._state.step(tokens, positions, active, source_len, head="beam", **self._beam_inputs(jobs))
            chosen, candidates = out["next_token"], out
        elif any(job.sampling is not None for job in jobs):          # one setting and uniform number per slot
            rows: list[SamplingParams | None] = [None] * b
            uniform = np.zeros(b, np.float32)
            for job in jobs:
                if job.sampling is not None:
                    rows[job.slots[0]] = job.sampling
                    uniform[job.slots[0]] = job.rng.random(dtype=np.float32)
            chosen = self._state.step(tokens, positions, active, source_len, head="sample",
                                      **head_inputs(rows, uniform))
        else:
            chosen = self._state.step(tokens, positions, active, source_len)
        finished, failed, reorder = [], [], np.arange(b)
        for job in jobs:
            job.position += 1
            if job.beams is not None:
                first = job.slots[0]                                  # every slot of the group holds its candidates
                if candidates["beam_tokens"][first, 0] < 0:           # the head's answer to NaN logits
                    failed.append(job)
                    continue
                from_beam = job.beams.advance(candidates["beam_scores"][first], candidates["beam_tokens"][first],
                                              candidates["beam_sources"][first])
                reorder[job.slots] = np.asarray(job.slots)[from_beam]
                if job.beams.done:
                    finished.append(job)
                continue
            token = job.forced if job.position == 1 and job.forced is not None else int(chosen[job.slots[0]])
            if token < 0:                                             # the heads' answer to NaN logits
                failed.append(job)
                continue
            job.generated.append(token)
            if token == eos or len(job.generated) >= job.max_new_tokens:
                finished.append(job)
        if (reorder != np.arange(b)).any():
            self._state.reorder(reorder)
        with self._cond:
            self._useful_slot_steps += int(active.sum())
            self._slot_steps += b
            for job in finished + failed:
                for slot in job.slots:
                    self._slots[slot] = None
            self._cond.notify_all()
        for job in finished:
            job.finish(start)
        for job in failed:
            job.fail(FloatingPointError(f"the model produced NaN logits at target position {job.position - 1}; "
                                        "with amp='f16' use 'bf16' or 'f32', else check the weights"))
        self._keep_long_rows_long()

    def _keep_long_rows_long(self) -> None:
        """Move the furthest single-row requests of the short cache segment into the long one while that lowers the
        short segment's target length for the next step (`SlotState.target_length`): each swaps with a free long
        slot, or with the long slot whose single-row request is nearest its start, if that is behind it. Beam
        requests stay (their slots' order is their beams'). A moved request's positions fit its new segment: the
        long one is stored at least as long as the short one, and the request moving out of it is behind the one
        moving in."""
        long_slots = self._state.long_slots
        if not long_slots:
            return
        length, swaps = self._state.target_length, []
        with self._cond:
            while True:
                short = [slot for slot in range(long_slots.start) if self._slots[slot] is not None]
                movable = [slot for slot in short if self._slots[slot].num_beams == 1]
                if not movable:
                    break
                mover = max(movable, key=lambda slot: self._slots[slot].position)
                behind = [slot for slot in long_slots if self._slots[slot] is None or (
                    self._slots[slot].num_beams == 1 and self._slots[slot].position < self._slots[mover].position)]
                if not behind:
                    break
                target = min(behind, key=lambda slot: -1 if self._slots[slot] is None else self._slots[slot].position)
                rest = [self._slots[slot].position for slot in short if slot != mover]
                if self._slots[target] is not None:
                    rest.append(self._slots[target].position)
                if length(self._slots[mover].position + 1) <= length(max(rest, default=0) + 1):
                    break
                for slot, job in ((mover, self._slots[target]), (target, self._slots[mover])):
                    self._slots[slot] = job
                    if job is not None:
                        job.slots = [slot]
                swaps.append((mover, target))
            self._moves += bool(swaps)
        for mover, target in swaps:                  # in the order decided
            self._state.move(mover, target)

    def _beam_inputs(self, jobs: list[_Job]) -> dict[str, np.ndarray]:
        """The beam head's per-slot inputs: the forced token at a request's first step (-1: none), each beam's
        running score, and a group id per request (its first slot; its beams' slots are in increasing order, so
        beam i is the group's i-th slot). Other slots are groups of their own."""
        b = len(self._slots)
        forced, score, group = np.full(b, -1, np.int32), np.zeros(b, np.float32), np.arange(b, dtype=np.int32)
        for job in jobs:
            if job.beams is not None:
                forced[job.slots] = job.beams.forced_token()
                score[job.slots] = job.beams.running_scores
                group[job.slots] = job.slots[0]
        return {"forced": forced, "beam_score": score, "beam_group": group}

    def _fail_in_flight(self, error: Exception) -> None:
        with self._cond:
            jobs = list({id(job): job for job in self._slots if job is not None}.values()) + list(self._staged)
            self._slots = [None] * len(self._slots)
            self._staged.clear()                      # their staging rows went with the failed state
        for job in jobs:   # the state whose buffers the failed call took is rebuilt, zeroed, on the next call
            job.fail(RuntimeError(f"the device call for this request failed: {error}"))
