"""`nllb_neuronx.agreement`: teacher-forced greedy decisions against a reference output."""

from __future__ import annotations

import numpy as np
import pytest

from nllb_neuronx import NLLBForSampling
from nllb_neuronx.agreement import decision_agreement, forced_greedy_choices
from tests.conftest import source_batch


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return NLLBForSampling.from_pretrained(tiny_checkpoint[0], batch_size=2, n_positions=[16],
                                           encoder_buckets=[16]).to_neuron()


def test_a_model_agrees_with_its_own_greedy_output_and_not_with_a_changed_one(model):
    c = model.config
    ids, mask = source_batch(c.vocab_size, lengths=(9, 5, 12))
    out = model.sample(ids, mask, max_new_tokens=10, forced_bos_token_id=5)     # random weights: runs to the limit
    sources = [row[m.astype(bool)] for row, m in zip(ids, mask)]
    references = [list(row[1:][row[1:] != c.pad_token_id]) for row in out]
    agreed, total = decision_agreement(model, sources, references, c.decoder_start_token_id)
    assert agreed == total == sum(len(r) - 1 for r in references)                  # the forced token is not counted

    changed = [list(r) for r in references]
    changed[1][4] = (changed[1][4] + 1) % c.vocab_size                              # one reference token differs
    agreed_changed, total_changed = decision_agreement(model, sources, changed, c.decoder_start_token_id)
    assert total_changed == total and agreed_changed < total


def test_errors_name_the_problem(model):
    ids, mask = source_batch(model.config.vocab_size, lengths=(6, 4))
    with pytest.raises(ValueError, match="largest decoder bucket 16"):
        forced_greedy_choices(model, ids, mask, np.full((2, 17), 2))
    with pytest.raises(ValueError, match=r"\[rows, L\]"):
        forced_greedy_choices(model, ids, mask, np.full(2, 2))
    with pytest.raises(ValueError, match="2 sources but 1 references"):
        decision_agreement(model, [ids[0], ids[1]], [[5, 6]], 2)
