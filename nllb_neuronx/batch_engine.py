"""BatchEngine: the engine contract (engine_api.py) kept with one lockstep batch at a time.

    engine = BatchEngine(model, max_queue=256)
    future = engine.submit(GenerationRequest(ids, forced_bos_token_id=fra_id, max_new_tokens=64))
    future.result()                       # int64 ids as HF generate() gives for that line alone

A background thread takes up to `batch_size` queued requests that can share a batch (same beams and sampling
parameters; a seeded sampling request runs alone, so its draws do not depend on its neighbours), waiting at most
`max_wait_s` for a batch to fill, runs them through `model.sample()` (greedy or sampled, a forced language token per
row) or, for beams, HF `generate()` through the adapter, and resolves their futures. Rows that finish early wait for
the batch's longest row: this is continuous batching off, the baseline `SlotEngine` is measured against.
`future.cancel()` withdraws a request that has not started; a running batch is not interrupted. A bad request fails
its future with ValueError.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from nllb_neuronx.engine_api import (EngineClosed, EngineStats, GenerationRequest, QueueFull, SamplingParams,
                                     check_request)
from nllb_neuronx.model import NLLBForSampling

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Pending:
    request: GenerationRequest
    future: concurrent.futures.Future


class BatchEngine:
    def __init__(self, model: NLLBForSampling, max_queue: int | None = None, max_wait_s: float = 0.005):
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be at least 1 (or None: unbounded), got {max_queue}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.model, self.max_queue, self.max_wait_s = model, max_queue, max_wait_s
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition(threading.RLock())  # re-entrant: a cancel callback may run under it
        self._closed = False
        self._active = self._useful = self._slot_steps = 0
        self._hf_adapter = None
        self._worker = threading.Thread(target=self._run, name="BatchEngine", daemon=True)
        self._worker.start()

    # --------------------------------------------------------------------------------------------- public API
    def submit(self, request: GenerationRequest) -> concurrent.futures.Future:
        """Queue one request; a bad one fails its future with ValueError (as SlotEngine does)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._validate(request)
        except ValueError as error:
            future.set_running_or_notify_cancel()
            future.set_exception(error)
            return future
        pending = _Pending(request, future)
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is closed: it takes no new requests")
            if self.max_queue is not None and len(self._queue) >= self.max_queue:
                raise QueueFull(f"the engine queue holds {len(self._queue)} requests (max_queue={self.max_queue})")
            self._queue.append(pending)
            future.add_done_callback(lambda f: f.cancelled() and self._withdraw(pending))
            self._cond.notify_all()
        return future

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[np.ndarray]:
        waiting: collections.deque[concurrent.futures.Future] = collections.deque()
        for request in requests:
            while True:
                try:
                    waiting.append(self.submit(request))
                    break
                except QueueFull:  # make room: hand back our oldest result, or wait for other callers' work
                    if waiting:
                        yield waiting.popleft().result()
                    else:
                        time.sleep(self.max_wait_s or 0.001)
        while waiting:
            yield waiting.popleft().result()

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(slots=self.model.batch_size, active_slots=self._active, queue_depth=len(self._queue),
                               useful_slot_steps=self._useful, slot_steps=self._slot_steps)

    def close(self, drain: bool = True) -> None:
        with self._cond:
            self._closed = True
            if not drain:
                for pending in list(self._queue):
                    pending.future.cancel()
            self._cond.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join()

    # ------------------------------------------------------------------------------------------------ checks
    def _validate(self, r: GenerationRequest) -> None:
        check_request(r, self.model.config.vocab_size, self.model.compile_config, self.model.batch_size)

    # ------------------------------------------------------------------------------------------------ worker
    def _withdraw(self, pending: _Pending) -> None:
        with self._cond:
            try:
                self._queue.remove(pending)
            except ValueError:  # already taken into a batch, which skips it
                pass

    @staticmethod
    def _batch_key(r: GenerationRequest) -> tuple:
        """Requests with equal keys share a batch. Beams: one length limit per generate() call (a shorter limit
        changes beam search's result)."""
        return (r.num_beams, r.sampling, r.forced_bos_token_id is None, r.max_new_tokens if r.num_beams > 1 else 0,
                r.length_penalty if r.num_beams > 1 else 1.0)

    def _take_batch(self) -> list[_Pending]:
        """The oldest request and the queued ones that can share its batch; a seeded draw runs alone, so that its
        tokens do not depend on its neighbours."""
        first = self._queue[0].request
        if first.sampling is not None and first.sampling.seed is not None:
            taken = [self._queue[0]]
        else:
            key = self._batch_key(first)
            taken = [p for p in self._queue if self._batch_key(p.request) == key][: self.model.batch_size
                                                                                   // first.num_beams]
        for p in taken:
            self._queue.remove(p)
        return [p for p in taken if p.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return                                                       # closed and drained
                deadline = time.monotonic() + self.max_wait_s
                while 0 < len(self._queue) < self.model.batch_size and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if not self._queue:
                    continue                                                     # all withdrawn meanwhile
                batch = self._take_batch()
                self._active = sum(p.request.num_beams for p in batch)
            if batch:
                self._run_batch(batch)
            with self._cond:
                self._active = 0

    def _run_batch(self, batch: list[_Pending]) -> None:
        requests = [p.request for p in batch]
        try:
            out = self._generate(requests)
            eos = self.model.config.eos_token_id
            results = [_trim(row, r.max_new_tokens, eos) for row, r in zip(out, requests)]
        except Exception as e:  # every taken request is answered, with the failure if there is one
            log.exception("batch of %d requests failed", len(batch))
            for p in batch:
                p.future.set_exception(e)
            return
        with self._cond:
            self._slot_steps += self.model.batch_size * (out.shape[1] - 1)
            self._useful += sum(r.num_beams * (len(ids) - 1) for r, ids in zip(requests, results))
        for p, ids in zip(batch, results):
            p.future.set_result(ids)

    def _generate(self, requests: list[GenerationRequest]) -> np.ndarray:
        pad = self.model.config.pad_token_id
        ids = np.full((len(requests), max(len(r.input_ids) for r in requests)), pad, np.int64)
        mask = np.zeros_like(ids)
        for row, r in enumerate(requests):
            ids[row, : len(r.input_ids)], mask[row, : len(r.input_ids)] = r.input_ids, 1
        first = requests[0]
        forced = None if first.forced_bos_token_id is None else [r.forced_bos_token_id for r in requests]
        max_new = max(r.max_new_tokens for r in requests)  # greedy and sampled rows are cut to their own limit
        if first.num_beams > 1:
            return self._beam_search(ids, mask, forced, first.num_beams, max_new, first.length_penalty)
        s = first.sampling or SamplingParams()
        return self.model.sample(ids, mask, max_new_tokens=max_new, forced_bos_token_id=forced,
                                 do_sample=first.sampling is not None, temperature=s.temperature, top_k=s.top_k,
                                 top_p=s.top_p, seed=s.seed)

    def _beam_search(self, ids, mask, forced, num_beams: int, max_new: int, length_penalty: float = 1.0) -> np.ndarray:
        """HF generate()'s beam search on the compiled programs (the adapter reorders the KV cache on device)."""
        import torch
        from transformers import AutoConfig

        from nllb_neuronx.generation import HuggingFaceGenerationModelAdapter

        if self._hf_adapter is None:
            config = AutoConfig.from_pretrained(str(self.model.checkpoint.path))
            self._hf_adapter = HuggingFaceGenerationModelAdapter(config, self.model)
        args = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), num_beams=num_beams,
                    max_new_tokens=max_new, length_penalty=length_penalty)
        if forced is not None and len(set(forced)) == 1:
            args["forced_bos_token_id"] = forced[0]
        elif forced is not None:  # a language per row: each row's decoder prompt is [start, its language]
            start = self.model.config.decoder_start_token_id
            args["decoder_input_ids"] = torch.tensor([[start, f] for f in forced])
            args["max_new_tokens"] = max_new - 1
        with torch.no_grad():
            return self._hf_adapter.generate(**args).numpy()


def _trim(row: np.ndarray, max_new_tokens: int, eos: int) -> np.ndarray:
    """One row as generate() gives it for that line alone: decoder start and at most `max_new_tokens` tokens,
    ending at the first EOS (no padding after it)."""
    row = np.asarray(row[: 1 + max_new_tokens], np.int64)
    ends = np.nonzero(row[1:] == eos)[0]
    return row[: 2 + ends[0]].copy() if ends.size else row.copy()
