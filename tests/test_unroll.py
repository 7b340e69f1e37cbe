"""Several greedy decode steps per decoder call (`decode_unroll`): the same tokens as one step per call, rows stopping
mid-call included, and a program the Neuron checker passes."""

from __future__ import annotations

import numpy as np
import pytest

from hlo.targets import neuron
from nllb_neuronx import NLLBForSampling
from nllb_neuronx.program_key import DecoderKey
from tests.conftest import source_batch


def _model(path, unroll: int, tp: int = 1) -> NLLBForSampling:
    # two target buckets, so an unrolled call moves into the larger one mid-decode
    return NLLBForSampling.from_pretrained(path, batch_size=4, tp_degree=tp, n_positions=[8, 16],
                                           encoder_buckets=[16], decode_unroll=unroll)


@pytest.mark.parametrize("tp", [1, 2])
def test_unrolled_greedy_equals_one_step_per_call(tiny_checkpoint, tp):
    path, _ = tiny_checkpoint
    ids, mask = source_batch(128, lengths=(9, 5, 12))
    one = _model(path, 1, tp).to_neuron()
    three = _model(path, 3, tp).to_neuron()
    free = one.sample(ids, mask, max_new_tokens=14, eos_token_id=[])                  # no row stops
    # an EOS that row 0 emits mid-decode (not at a call boundary of 3 steps after the first), others later or never
    eos = int(free[0, 6])
    for max_new in (14, 11):                                                           # 11: a tail of one-step calls
        want = one.sample(ids, mask, max_new_tokens=max_new, eos_token_id=eos)
        got = three.sample(ids, mask, max_new_tokens=max_new, eos_token_id=eos)
        np.testing.assert_array_equal(got, want)
    assert (want[0, 7:] == one.config.pad_token_id).all() and want.shape[1] > 7       # row 0 did stop mid-call
    np.testing.assert_array_equal(three.sample(ids, mask, max_new_tokens=14, eos_token_id=[]), free)
    unrolled = [k for k in three.compiled_programs if isinstance(k, DecoderKey) and k.steps == 3]
    assert {k.target_len for k in unrolled} == {8, 16}
    assert not [k for k in one.compiled_programs if isinstance(k, DecoderKey) and k.steps > 1]


def test_unrolled_program_is_listed_and_neuron_clean(tiny_checkpoint):
    path, _ = tiny_checkpoint
    model = _model(path, 4, tp=2)
    keys = [k for k in model.program_builders() if isinstance(k, DecoderKey) and k.steps > 1]
    assert keys == [DecoderKey(16, "greedy", 1, 8, steps=4), DecoderKey(16, "greedy", 1, 16, steps=4)]
    module = keys[0].build(model.shapes)
    assert neuron.check(module, num_replicas=2) == [], neuron.report(neuron.check(module, num_replicas=2))
    assert dict(module.outputs)["next_tokens"].dims == (4, 4)                         # [B, steps]


def test_unroll_is_refused_where_it_cannot_apply(tiny_checkpoint):
    path, _ = tiny_checkpoint
    with pytest.raises(ValueError, match="decode_unroll"):
        _model(path, 0)
    model = _model(path, 2)
    with pytest.raises(ValueError, match="steps"):
        DecoderKey(16, "sample", 1, 8, steps=2).build(model.shapes)
