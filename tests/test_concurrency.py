"""Concurrent callers of one model: each call served whole, never a wrong row; and a call cut off mid-way leaves the
model usable."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nllb_neuronx import NLLBForSampling
from nllb_neuronx.translator import Translator
from tests.conftest import source_batch

LINES = ["Hello world.", "How are you?", "The cat sat on the mat.", "Translation at scale is fun!",
         "Bonjour le monde.", "Wie geht es dir?", "Machines translate many languages every day.", "Hello cat."]
JOBS = [  # (texts, target, kwargs): greedy and beams through the Translator's engine, sharing its steps
    (LINES, "fra_Latn", {}),
    (LINES[::-1], "deu_Latn", {}),
    (LINES[2:] + LINES[:2], "spa_Latn", dict(num_beams=2, max_new_tokens=10)),
    (LINES[5:] + LINES[:5], "tha_Thai", {}),
]


def test_four_threads_equal_sequential_results(nllb_checkpoint):
    translator = Translator.from_pretrained(nllb_checkpoint[0], batch_size=4, n_positions=[16, 32],
                                            encoder_buckets=[16, 32])
    run = lambda job: translator.translate(job[0], "eng_Latn", job[1], **job[2])  # noqa: E731
    sequential = [run(job) for job in JOBS]
    assert len({tuple(r) for r in sequential}) == len(JOBS)      # the jobs differ: a swapped row would show
    for _ in range(2):
        with ThreadPoolExecutor(len(JOBS)) as pool:
            assert list(pool.map(run, JOBS)) == sequential
    with translator.model.exclusive(), ThreadPoolExecutor(1) as pool:   # the engine does not take the model lock:
        assert pool.submit(run, JOBS[0]).result(timeout=120) == sequential[0]   # callers are not serialized
    translator.close()


class Interrupted(Exception):
    """What a Ctrl-C (KeyboardInterrupt) or a cancelled worker raises: here at a chosen point."""


def interrupt_after_program_runs(number: int):
    """A tracer that raises Interrupted when the `number`-th program execution returns: the program ran and consumed
    (donated) the caches, but the caller never receives its outputs, as when a KeyboardInterrupt arrives then."""
    count = [0]

    def tracer(frame, event, arg):
        code = frame.f_code
        if event != "call" or code.co_name != "execute" or not code.co_filename.endswith("xla.py"):
            return None

        def on_return(frame, event, arg):
            if event == "return":
                count[0] += 1
                if count[0] == number:
                    raise Interrupted(f"interrupted after program run {number}")
            return on_return

        return on_return

    return tracer


@pytest.mark.parametrize("failing_run", [2, 3])  # the prefix step, a single-token step
def test_model_is_usable_after_a_call_fails_mid_way(tiny_checkpoint, failing_run):
    path, hf = tiny_checkpoint
    model = NLLBForSampling.from_pretrained(path, batch_size=2, n_positions=[8], encoder_buckets=[8]).to_neuron()
    ids, mask = source_batch(hf.config.vocab_size, lengths=(5, 3))
    expected = model.sample(ids, mask, max_new_tokens=6, forced_bos_token_id=5)
    sys.settrace(interrupt_after_program_runs(failing_run))
    try:
        with pytest.raises(Interrupted):
            model.sample(ids, mask, max_new_tokens=6, forced_bos_token_id=5)
    finally:
        sys.settrace(None)
    with pytest.raises(RuntimeError, match="call encode"):     # the half-finished call's state is gone
        model.decode_step(np.array([2, 2]))
    np.testing.assert_array_equal(model.sample(ids, mask, max_new_tokens=6, forced_bos_token_id=5), expected)
    model.encode(ids, mask)
    model.decode_step(np.array([[2, 5], [2, 5]]))
    with pytest.raises(ValueError, match="must lie in"):       # a bad argument keeps the state: the loop goes on
        model.decode_step(np.array([2, 10_000]))
    assert model.position == 2 and model.decode_step(np.array([7, 7])).shape == (2, hf.config.vocab_size)
