"""Exactness on a corpus: hundreds of lines of very different lengths, through the Translator's slot engine at batch
8, each equal to HF generate() on that line alone (greedy, f32), with a model trained on a synthetic translation
task (`trained_model`), so every line stops on EOS by itself and slots are refilled all the time."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from nllb_neuronx.translator import Translator

toy_task = pytest.importorskip("nllb_neuronx.toy_task", reason="the toy task and its trained_model fixture (h-toy)")

LINES = 240
MAX_SOURCE, MEDIAN_SOURCE = 32, 10       # the toy model's training lengths (toy_task.TrainConfig)
SHAPE = dict(batch_size=8, n_positions=[32, 96], encoder_buckets=[16, 32])


@pytest.fixture(scope="module")
def corpus_and_reference(trained_model):
    """The corpus's source texts and HF generate()'s ids for each line alone (after the decoder start token)."""
    _, hf, tokenizer = trained_model
    lines = toy_task.corpus(toy_task.TrainConfig().task, tokenizer, LINES, max_tokens=MAX_SOURCE,
                            median_tokens=MEDIAN_SOURCE, seed=5)
    texts = [source for source, _ in lines]
    with one_torch_thread():
        return texts, toy_task.translate_hf(hf, tokenizer, texts, max_new_tokens=SHAPE["n_positions"][-1])


@contextlib.contextmanager
def one_torch_thread():
    """HF generate() line by line: torch with 2 threads on the 2 busy cores of the test machine ran about 10x slower
    than with 1 (about 25 ms a line here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def translator(trained_model):
    with Translator.from_pretrained(trained_model[0], **SHAPE) as translator:
        yield translator


def test_every_line_equals_hf_generate_alone(translator, trained_model, corpus_and_reference):
    tokenizer = trained_model[2]
    texts, reference = corpus_and_reference
    eos = tokenizer.eos_token_id
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert min(lengths) <= 4 and max(lengths) >= MAX_SOURCE - 2          # lengths spread over the whole range
    assert np.mean([ids[-1] == eos for ids in reference]) > 0.95          # lines stop by themselves
    assert np.std([len(ids) for ids in reference]) > 5

    before = translator.engine().stats()
    requests = translator.requests(texts, toy_task.SRC_LANG, toy_task.TGT_LANG)
    ids = list(translator.engine().generate([r for line in requests for r in line]))
    for i, (got, want) in enumerate(zip(ids, reference)):
        assert got[1:].tolist() == want, f"line {i} ({lengths[i]} source tokens)"
    after = translator.engine().stats()
    useful, steps = after.useful_slot_steps - before.useful_slot_steps, after.slot_steps - before.slot_steps
    assert useful > 0.5 * steps                                           # refilled slots: most slot-steps useful
    out = translator.translate(texts, toy_task.SRC_LANG, toy_task.TGT_LANG)
    assert out == [tokenizer.decode(r, skip_special_tokens=True) for r in reference]


def test_beams_on_the_trained_model_equal_hf_beam_search_alone(translator, trained_model, corpus_and_reference):
    """Beam search where hypotheses really finish on EOS (length-normalised scores, early-stop heuristic): 4 beams
    per line take 4 of the 8 slots, two lines at a time, on 32 lines, and each line equals HF's beam search on it alone."""
    _, hf, tokenizer = trained_model
    texts, greedy = (part[:32] for part in corpus_and_reference)
    with one_torch_thread():
        reference = toy_task.translate_hf(hf, tokenizer, texts, num_beams=4, max_new_tokens=SHAPE["n_positions"][-1])
    requests = [r for line in translator.requests(texts, toy_task.SRC_LANG, toy_task.TGT_LANG, num_beams=4)
                for r in line]
    for i, (got, want) in enumerate(zip(translator.engine().generate(requests), reference)):
        assert got[1:].tolist() == want, f"line {i}"
    assert sum(b != g for b, g in zip(reference, greedy)) >= 3             # the beams searched: not greedy
