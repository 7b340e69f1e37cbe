"""Every program a model can run passes hlo.targets.neuron.check: each encoder bucket, every decoder head (logits,
greedy, sample), reorder, at tp 1, 2 and 8, in f32 and bf16. Programs are built, not compiled (building is cheap).

The programs checked here are the ones every CPU test runs, so the CPU tests test the HLO a NeuronCore would get.
"""

from __future__ import annotations

import types

import pytest

import hlo
from hlo.targets import neuron

from nllb_neuronx import NLLBForSampling, ProgramKey
from nllb_neuronx.config import CompileConfig, ModelConfig


def check_every_program(model: NLLBForSampling) -> dict[str, int]:
    """Build and check every program of the model's shape; returns the program names and their parameter counts."""
    tp, found = model.tp_degree, {}
    for key, build in model.program_builders().items():
        module = build()
        violations = neuron.check(module, num_replicas=tp)
        assert violations == [], f"{module.name}:\n{neuron.report(violations)}"
        assert (hlo.RANK_PARAM in module.params) == (tp > 1 and key.kind != "reorder"), module.name
        found[module.name] = len(module.params)
    return found


@pytest.mark.parametrize("amp", ["f32", "bf16"])
@pytest.mark.parametrize("tp", [1, 2, 8])
def test_every_program_is_clean(tiny_model, tp, amp):
    path, _ = tiny_model
    model = NLLBForSampling.from_pretrained(path, batch_size=2, tp_degree=tp, n_positions=[8],
                                            encoder_buckets=[8, 16], amp=amp)
    names = check_every_program(model)
    kinds = {name.split("_b")[0] for name in names}
    assert kinds == {"nllb_encoder", "nllb_reorder", "nllb_decoder_logits", "nllb_decoder_greedy",
                     "nllb_decoder_sample_k256"}
    assert len(names) == 2 + 2 + 2 * 1 * 2 * 3  # encoders, reorders, decoders (P 1 and 2, T, S, 3 heads)


NLLB_600M = ModelConfig(vocab_size=256206, d_model=1024, encoder_layers=12, decoder_layers=12,
                        encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                        decoder_ffn_dim=4096, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)


@pytest.mark.parametrize("tp", [1, 8])
def test_nllb_600m_shape_is_clean(tp, tmp_path):
    """At NLLB's own vocabulary (256,206) the sampling head sorts tiles, never the whole vocabulary. No weights are
    read: the model is built from its config alone."""
    compile_config = CompileConfig(batch_size=8, tp_degree=tp, n_positions=(64,), encoder_buckets=(32,), amp="bf16")
    no_weights = types.SimpleNamespace(path=tmp_path)   # a checkpoint directory without files: nothing is read
    model = NLLBForSampling(no_weights, NLLB_600M, compile_config)
    check_every_program(model)
    sample = model.program_builders()[ProgramKey("decoder", 32, "sample", 1, 64)]()
    sorts = [v for c in sample.computations for v in c.instructions if v.opcode == "sort"]
    assert sorts and max(v.operands[0].dims[v.attrs["dimensions"][0]] for v in sorts) <= neuron.SORT_LIMIT
