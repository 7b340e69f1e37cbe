"""Every kind of program a model can run passes hlo.targets.neuron.check: the lockstep encoder, every decoder head
(logits, greedy, sample) with one and two new tokens, reorder, and the slot engine's encoder, copy, steps (greedy,
logits) and reorder, at tp 1, 2 and 8, in f32 and bf16. Programs are built, not compiled (building is cheap). A
representative subset of buckets is checked (every kind at the smallest source bucket, the slot encoder at its largest
sub-batch): the buckets change only dimensions.

The programs checked here are the ones every CPU test runs, so the CPU tests test the HLO a NeuronCore would get.
"""

from __future__ import annotations

import pytest

import hlo
from hlo.targets import neuron

from nllb_neuronx import NLLBForSampling
from nllb_neuronx.config import CompileConfig, ModelConfig
from nllb_neuronx.program_key import DecoderKey, SlotStepKey

KINDS = {"encoder", "reorder", "decoder", "slot_encoder", "slot_copy", "slot_step", "slot_reorder"}
MOVES_ONLY = {"reorder", "slot_reorder", "slot_copy"}   # programs that move state and read no weight: no rank input


def representative(keys: list) -> list:
    """One program per kind, head and new-token count at the smallest source bucket; slot encoders at the largest
    sub-batch (the most slot writes)."""
    smallest = min(k.source_len for k in keys if hasattr(k, "source_len"))
    rows = max(k.rows for k in keys if k.kind == "slot_encoder")
    chosen = {}
    for key in keys:
        if getattr(key, "source_len", smallest) == smallest and getattr(key, "rows", rows) == rows:
            chosen.setdefault((key.kind, getattr(key, "head", ""), getattr(key, "new_tokens", 0)), key)
    return list(chosen.values())


def check_every_program(model: NLLBForSampling) -> dict[str, int]:
    """Build and check a program of every kind of the model's shape; returns the program names and their parameter
    counts."""
    tp, found, builders = model.tp_degree, {}, model.program_builders()
    assert {key.kind for key in builders} == KINDS
    for key in representative(list(builders)):
        module = builders[key]()
        violations = neuron.check(module, num_replicas=tp)
        assert violations == [], f"{module.name}:\n{neuron.report(violations)}"
        assert (hlo.RANK_PARAM in module.params) == (tp > 1 and key.kind not in MOVES_ONLY), module.name
        found[module.name] = len(module.params)
    return found


@pytest.mark.parametrize("amp", ["f32", "bf16"])
@pytest.mark.parametrize("tp", [1, 2, 8])
def test_every_program_is_clean(tiny_model, tp, amp):
    path, _ = tiny_model
    model = NLLBForSampling.from_pretrained(path, batch_size=2, tp_degree=tp, n_positions=[8],
                                            encoder_buckets=[8, 16], amp=amp)
    names = check_every_program(model)
    kinds = {name.split("_b2_")[0] for name in names}                             # batch_size=2
    assert kinds == {"nllb_encoder", "nllb_reorder", "nllb_decoder_logits", "nllb_decoder_greedy",
                     "nllb_decoder_sample_k256", "nllb_decoder_beam_k4", "nllb_slot_encoder", "nllb_slot_copy",
                     "nllb_slot_reorder"}
    suffix = f"_tp{tp}" + ("" if amp == "f32" else f"_{amp}")                        # names differ by amp
    assert all(name.endswith(suffix) for name in names)
    slots = {f"nllb_decoder_{h}_b2_p1_t8_s8_of16{suffix}"                            # steps: 8 of 16 stored
             for h in ("greedy", "beam_k4", "sample_k256")}
    assert {n for n in names if "_of16_" in n} == slots | {f"nllb_slot_encoder_b2_k2_s8_of16{suffix}",
                                                            f"nllb_slot_copy_b2_of16{suffix}"}
    assert len(names) == 1 + 1 + 2 * 3 + 1 + 3 + 1 + 1  # encoder, reorder, decoders (P 1 and 2, 3 heads), slot programs


@pytest.mark.parametrize("tp", [1, 2])
def test_every_int8_program_is_clean(tiny_checkpoint, tp):
    """int8 weights in transformers-neuronx's form (the programs a Neuron runtime builds: `backend="neuron"`)."""
    path, _ = tiny_checkpoint
    model = NLLBForSampling.from_pretrained(path, batch_size=2, tp_degree=tp, n_positions=[8],
                                            encoder_buckets=[8, 16], amp="bf16", backend="neuron", quantization="s8")
    names = check_every_program(model)
    assert len(names) == 1 + 1 + 2 * 3 + 1 + 3 + 1 + 1
    assert all(name.endswith(f"_tp{tp}_bf16_s8") for name in names)   # not the names of the bf16 model's programs


@pytest.mark.parametrize("tp", [1, 2])
def test_the_slot_engines_long_segment_programs_are_clean(tiny_checkpoint, tp):
    """The programs of a slot state whose caches are in two row segments (`slot_segments.py`: what the slot engine
    runs on XLA CPU) pass the check too, should a backend that reads every stored position be a Neuron one."""
    path, _ = tiny_checkpoint
    model = NLLBForSampling.from_pretrained(path, batch_size=4, tp_degree=tp, n_positions=[8, 16], encoder_buckets=[8],
                                            backend="xla-cpu")
    builders = model.program_builders()
    split = [key for key in builders if key.kind == "slot_move" or getattr(key, "long_rows", 0)
             or getattr(key, "segment", None) is not None]
    assert {key.kind for key in split} == {"slot_step", "slot_reorder", "slot_move", "slot_move_caches", "resize"}
    for key in split:
        module = builders[key]()
        violations = neuron.check(module, num_replicas=tp)
        assert violations == [], f"{module.name}:\n{neuron.report(violations)}"


NLLB_600M = ModelConfig(vocab_size=256206, d_model=1024, encoder_layers=12, decoder_layers=12,
                        encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                        decoder_ffn_dim=4096, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)


@pytest.mark.parametrize("tp", [1, 8])
def test_nllb_600m_shape_is_clean(tp):
    """At NLLB's own vocabulary (256,206) the sampling head sorts tiles, never the whole vocabulary. No weights are
    read: the model is built from its config alone."""
    compile_config = CompileConfig(batch_size=8, tp_degree=tp, n_positions=(64,), encoder_buckets=(32, 64),
                                   amp="bf16")
    model = NLLBForSampling(None, NLLB_600M, compile_config)
    check_every_program(model)
    for key in (DecoderKey(32, "sample", 1, 64), SlotStepKey(32, "beam", 64)):  # beams: tiled top-k too
        program = model.program_builders()[key]()
        sorts = [v for c in program.computations for v in c.instructions if v.opcode == "sort"]
        assert sorts and max(v.operands[0].dims[v.attrs["dimensions"][0]] for v in sorts) <= neuron.SORT_LIMIT
