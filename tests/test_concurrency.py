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
JOBS = [  # (texts, target, kwargs): greedy through sample(), beams through the HF adapter
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
