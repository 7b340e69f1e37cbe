"""BatchEngine: the engine contract kept one lockstep batch at a time, checked against HF generate() line by line."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nllb_neuronx import NLLBForSampling
from nllb_neuronx.batch_engine import BatchEngine
from nllb_neuronx.engine_api import EngineClosed, GenerationRequest, QueueFull, SamplingParams

from .conftest import hf_generate

SHAPE = dict(batch_size=4, n_positions=[16], encoder_buckets=[16])


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return NLLBForSampling.from_pretrained(tiny_checkpoint[0], **SHAPE).to_neuron()


def lines(vocab: int, count: int, seed: int = 3) -> list[list[int]]:
    """Token ids of `count` lines of 2..15 tokens, each ending in EOS."""
    rng = np.random.default_rng(seed)
    return [list(rng.integers(4, vocab, int(n) - 1)) + [2] for n in rng.integers(2, 16, count)]


def alone(hf, ids, forced, max_new, **kwargs) -> np.ndarray:
    return hf_generate(hf, np.array([ids]), np.ones((1, len(ids)), np.int64), forced_bos_token_id=forced,
                       max_new_tokens=max_new, **kwargs)[0]


def test_each_line_equals_hf_generate_alone_from_concurrent_submitters(model, tiny_checkpoint):
    hf = tiny_checkpoint[1]
    requests = [GenerationRequest(ids, forced_bos_token_id=10 + i % 3, max_new_tokens=4 + i % 12)
                for i, ids in enumerate(lines(hf.config.vocab_size, 14))]
    engine = BatchEngine(model)
    try:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda r: engine.submit(r).result(timeout=60), requests))
        for r, got in zip(requests, results):
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, alone(hf, r.input_ids, r.forced_bos_token_id, r.max_new_tokens))
        in_order = list(engine.generate(requests))
        assert all(np.array_equal(a, b) for a, b in zip(in_order, results))
        stats = engine.stats()
        assert (stats.slots, stats.active_slots, stats.queue_depth) == (4, 0, 0)
        assert 0 < stats.useful_slot_steps <= stats.slot_steps and 0 < stats.occupancy <= 1
    finally:
        engine.close()


def test_generate_keeps_order_through_a_full_queue(model, tiny_checkpoint):
    vocab = tiny_checkpoint[1].config.vocab_size
    requests = [GenerationRequest(ids, 11, 6) for ids in lines(vocab, 9, seed=5)]
    engine = BatchEngine(model, max_queue=1)
    try:
        got = list(engine.generate(requests))
        expected = [engine.submit(r).result(timeout=60) for r in requests]
        assert len(got) == 9 and all(np.array_equal(a, b) for a, b in zip(got, expected))
    finally:
        engine.close()


def test_beams_and_seeded_sampling(model, tiny_checkpoint):
    hf = tiny_checkpoint[1]
    ids = lines(hf.config.vocab_size, 3, seed=7)
    engine = BatchEngine(model)
    try:
        beams = [engine.submit(GenerationRequest(x, 12, 9, num_beams=2)) for x in ids]
        for x, f in zip(ids, beams):
            np.testing.assert_array_equal(f.result(timeout=120), alone(hf, x, 12, 9, num_beams=2))
        sampling = SamplingParams(temperature=0.9, top_k=20, seed=4)
        drawn = [engine.submit(GenerationRequest(ids[0], 12, 8, sampling=sampling)) for _ in range(2)]
        first, second = (f.result(timeout=120) for f in drawn)
        np.testing.assert_array_equal(first, second)         # a seeded draw does not depend on its batch
        direct = model.sample(np.array([ids[0]]), max_new_tokens=8, forced_bos_token_id=12, do_sample=True,
                              temperature=0.9, top_k=20, seed=4)[0]
        np.testing.assert_array_equal(first, direct[: len(first)])
    finally:
        engine.close()


def test_full_queue_cancel_and_close(model):
    engine = BatchEngine(model, max_queue=2, max_wait_s=30)        # the worker waits for a batch of 4 to fill
    a = engine.submit(GenerationRequest([5, 6, 2], 10, 3))
    b = engine.submit(GenerationRequest([7, 2], 10, 3))
    with pytest.raises(QueueFull, match=r"max_queue=2"):
        engine.submit(GenerationRequest([8, 2], 10, 3))
    assert a.cancel() and a.cancelled()
    assert engine.stats().queue_depth == 1
    engine.close(drain=True)                                       # runs what is queued, then stops
    assert len(b.result(timeout=0)) >= 2
    with pytest.raises(EngineClosed, match="closed"):
        engine.submit(GenerationRequest([5, 2], 10, 3))

    engine = BatchEngine(model, max_wait_s=30)
    c = engine.submit(GenerationRequest([5, 2], 10, 3))
    engine.close(drain=False)
    assert c.cancelled()


@pytest.mark.parametrize("request_, message", [
    (GenerationRequest([], 10, 3), "input_ids must be a non-empty sequence"),
    (GenerationRequest([5] * 17, 10, 3), r"a source of 17 tokens is longer than the largest encoder bucket 16"),
    (GenerationRequest([5, 2], 10, 0), r"max_new_tokens must lie in \[1, 16\]"),
    (GenerationRequest([5, 2], 10, 17), r"max_new_tokens must lie in \[1, 16\]"),
    (GenerationRequest([5, 2], 10, 3, num_beams=5), r"num_beams must lie in \[1, 4\]"),
    (GenerationRequest([5, 2], 10, 3, num_beams=2, sampling=SamplingParams()), "beam search with sampling"),
])
def test_bad_requests_fail_their_future_with_a_value_error(model, request_, message):
    engine = BatchEngine(model)
    try:
        with pytest.raises(ValueError, match=message):
            engine.submit(request_).result(timeout=0)
    finally:
        engine.close()
