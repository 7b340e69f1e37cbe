"""HF generate() on the compiled programs equals HF generate() on the reference model, token for token (f32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nllb_neuronx import HuggingFaceGenerationModelAdapter, NLLBForSampling
from tests.conftest import source_batch

MODES = {
    "greedy": dict(num_beams=1, do_sample=False),
    "beam2": dict(num_beams=2),
    "beam4_lp_returns": dict(num_beams=4, length_penalty=0.6, num_return_sequences=2, early_stopping=True),
    "beam4_long_lp": dict(num_beams=4, length_penalty=1.7, early_stopping="never"),
    "sample": dict(do_sample=True, top_k=10, top_p=0.9, temperature=0.8),
    "sample_returns": dict(do_sample=True, num_return_sequences=2, temperature=1.3),
    "processors": dict(num_beams=2, no_repeat_ngram_size=2, repetition_penalty=1.3, min_new_tokens=6,
                       bad_words_ids=[[7], [9, 10]]),
}


@pytest.fixture(scope="module")
def adapters(tiny_checkpoint):
    path, hf = tiny_checkpoint
    out = {}
    for tp in (1, 4):
        neuron = NLLBForSampling.from_pretrained(path, batch_size=12, tp_degree=tp, n_positions=[8, 16],
                                                 encoder_buckets=[8, 16]).to_neuron()
        out[tp] = HuggingFaceGenerationModelAdapter(hf.config, neuron)
    return hf, out


def _generate(model, ids, mask, seed=0, **kwargs):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs).numpy()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_generate_matches_hf(adapters, mode):
    hf, models = adapters
    ids, mask = source_batch(hf.config.vocab_size)  # rows of different lengths
    kwargs = dict(max_new_tokens=12, forced_bos_token_id=5, **MODES[mode])
    ref = _generate(hf, ids, mask, **kwargs)
    ours = _generate(models[1], ids, mask, **kwargs)
    np.testing.assert_array_equal(ours, ref)


def test_tp_degrees_give_the_same_beams(adapters):
    hf, models = adapters
    ids, mask = source_batch(hf.config.vocab_size, lengths=(7, 4, 11), seed=5)
    kwargs = dict(max_new_tokens=14, num_beams=4, num_return_sequences=4, forced_bos_token_id=6)
    np.testing.assert_array_equal(_generate(models[4], ids, mask, **kwargs), _generate(models[1], ids, mask, **kwargs))


def test_calls_are_independent(adapters):
    hf, models = adapters
    a_ids, a_mask = source_batch(hf.config.vocab_size, lengths=(6, 9), seed=11)
    b_ids, b_mask = source_batch(hf.config.vocab_size, lengths=(12,), seed=12)
    first = _generate(models[1], a_ids, a_mask, max_new_tokens=10, num_beams=3)
    _generate(models[1], b_ids, b_mask, max_new_tokens=14, num_beams=2)
    np.testing.assert_array_equal(_generate(models[1], a_ids, a_mask, max_new_tokens=10, num_beams=3), first)


def test_beams_times_rows_beyond_batch_size(adapters):
    hf, models = adapters
    ids, mask = source_batch(hf.config.vocab_size)  # 3 rows x 5 beams = 15 > 12
    with pytest.raises(ValueError, match="15 rows .* exceed the compiled batch_size 12; compile with batch_size >= 15"):
        _generate(models[1], ids, mask, max_new_tokens=4, num_beams=5)


def test_generation_longer_than_largest_bucket(adapters):
    hf, models = adapters
    ids, mask = source_batch(hf.config.vocab_size)
    with pytest.raises(ValueError, match="exceeds the largest decoder bucket 16"):
        _generate(models[1], ids, mask, max_new_tokens=30, min_new_tokens=30, num_beams=1)


def test_reorder_gathers_rows_on_device(tiny_checkpoint):
    """decode_step after reorder([1, 1, 0]) gives row 1's logits twice and row 0's once."""
    path, hf = tiny_checkpoint
    ids, mask = source_batch(hf.config.vocab_size, lengths=(5, 8))
    neuron = NLLBForSampling.from_pretrained(path, batch_size=3, n_positions=[8], encoder_buckets=[8]).to_neuron()
    neuron.encode(ids, mask)
    before = neuron.decode_step(np.array([[2, 5], [2, 6]]))
    states = neuron.encoder_hidden_states()
    neuron.reorder([1, 1, 0])
    np.testing.assert_array_equal(neuron.encoder_hidden_states(), states[[1, 1, 0]])
    after = neuron.decode_step(np.array([9, 9, 9]))
    neuron.encode(ids[[1, 1, 0]], mask[[1, 1, 0]])
    neuron.decode_step(np.array([[2, 6], [2, 6], [2, 5]]))
    np.testing.assert_allclose(after, neuron.decode_step(np.array([9, 9, 9])), atol=1e-5)
    assert before.shape == (2, hf.config.vocab_size)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        neuron.reorder([0, 3])
