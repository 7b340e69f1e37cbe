"""Which programs a model's shape lists for ahead-of-time compiles: exactly those generation can run."""

from __future__ import annotations

import re

import numpy as np
import pytest

import hlo

from nllb_neuronx import NLLBForSampling, layers
from nllb_neuronx.decoder_layer import ONE_ROW_COPIES_UP_TO
from nllb_neuronx.engine import GenerationRequest, SlotEngine
from nllb_neuronx.program_key import DecoderKey, EncoderKey, SlotMoveCachesKey, SlotMoveKey, SlotStepKey
from tests.conftest import source_batch


def test_default_shape_lists_no_prefix_program_that_never_runs(tiny_checkpoint):
    model = NLLBForSampling.from_pretrained(tiny_checkpoint[0])  # default buckets: 4 source x 3 target
    keys = model.program_builders()
    prefix = [k for k in keys if k.kind == "decoder" and k.new_tokens == 2]
    assert {k.target_len for k in prefix} == {64}                        # the two-token prefix runs only at position 0
    heads = 3                                                          # logits, greedy, sample
    lockstep = 4 * 2 + 4 * 3 * heads + 4 * heads                       # encoder + reorder, 1-token steps, prefixes: 56
    slot_heads = 3                                                     # greedy, sample, beam
    # slot encoders (insert size 1 at batch 1), steps (below S_max; at S_max the beam head only), reorder, slot copy
    slots = 4 * 1 + 3 * 3 * slot_heads + 3 + 1 + 1
    assert len(keys) == lockstep + slots
    # at the largest source bucket the slot step reads all the stored K/V: the lockstep program, listed once
    assert SlotStepKey(256, "greedy", 64).canonical(model.shapes) == DecoderKey(256, "greedy", 1, 64)
    assert SlotStepKey(128, "greedy", 64).canonical(model.shapes) in keys


def test_save_compiles_exactly_the_listed_programs_and_generation_needs_no_other(tiny_checkpoint, tmp_path):
    path, hf = tiny_checkpoint
    model = NLLBForSampling.from_pretrained(path, batch_size=3, n_positions=[4, 8], encoder_buckets=[8]).to_neuron()
    listed = set(model.program_builders())
    lockstep = 1 + 1 + 3 * 2 + 3                     # encoder, reorder, 1-token steps x 2 buckets x 3 heads, prefix x 3
    names = {build().name for build in model.program_builders().values()}
    if model.programs.build_shapes.reads_stored_caches:
        # XLA CPU: the states are stored at what their rows need (`stored_lengths`): a lockstep reorder per stored
        # target length; the slot engine's encoders (1, 2, 3 rows), beam steps at both target buckets (its other
        # steps are the lockstep decoders: one source bucket), a reorder per target length, a resize each way, the
        # slot copy (encode-ahead)
        assert len(listed) == lockstep + 1 + 3 + 2 + 2 + 2 + 1
    else:
        assert len(listed) == lockstep + 3 + 1 + 2 + 1   # slot encoders (1, 2, 3 rows), reorder, beam steps, slot
        #                                                  copy; the rest: the lockstep decoder's
    assert len(names) == len(listed)                 # each its own program
    model.save(str(tmp_path))
    assert len(list((tmp_path / "programs").iterdir())) == len(names)
    compiled = model.runtime.compile_count
    ids, mask = source_batch(hf.config.vocab_size, lengths=(6, 3))
    never = hf.config.vocab_size + 1
    model.sample(ids, mask, max_new_tokens=7, forced_bos_token_id=5, eos_token_id=never)  # crosses into bucket 8
    with SlotEngine(model) as engine:                # the slot engine's programs are listed too
        list(engine.generate([GenerationRequest(ids[0, :6], 5, 7), GenerationRequest(ids[1, :3], 5, 5, num_beams=2)]))
    assert model.runtime.compile_count == compiled and set(model.compiled_programs) == listed


def test_public_hooks_for_custom_loops_and_compile_timing(tiny_checkpoint):
    path, hf = tiny_checkpoint
    model = NLLBForSampling.from_pretrained(path, batch_size=2, n_positions=[8], encoder_buckets=[8, 16]).to_neuron()
    events = []
    model.add_program_observer(events.append)
    ids, mask = source_batch(hf.config.vocab_size, lengths=(6, 3))
    expected = model.sample(ids, mask, max_new_tokens=5, forced_bos_token_id=5)
    assert [e.key for e in events] == model.compiled_programs and all(e.seconds > 0 for e in events)
    assert model.compiled_programs == [EncoderKey(8), DecoderKey(8, "greedy", 2, 8), DecoderKey(8, "greedy", 1, 8)]

    model.encode(ids, mask)                       # the same greedy loop, by hand
    assert (model.source_rows, model.source_length) == (2, 8)
    tokens = [model.next_tokens(np.array([[2, 5], [2, 5]]))]
    for _ in range(3):
        tokens.append(model.next_tokens(tokens[-1]))
    np.testing.assert_array_equal(np.stack(tokens, 1), expected[:, 2:])

    model.forget_programs()                       # fetched again, from the runtime's caches: nothing compiles
    compiles, events[:] = model.runtime.compile_count, []
    np.testing.assert_array_equal(model.sample(ids, mask, max_new_tokens=5, forced_bos_token_id=5), expected)
    assert len(events) == 3 and model.runtime.compile_count == compiles


def test_compile_all_of_one_head_covers_greedy_translation(tiny_checkpoint):
    path, hf = tiny_checkpoint
    model = NLLBForSampling.from_pretrained(path, batch_size=2, n_positions=[8], encoder_buckets=[8]).to_neuron()
    model.compile_all(heads=("greedy",))
    listed = set(model.programs.every_program(("greedy",)))
    assert set(model.compiled_programs) == listed and len(listed) < len(model.program_builders())
    ids, mask = source_batch(hf.config.vocab_size, lengths=(6, 3))
    model.sample(ids, mask, max_new_tokens=5, forced_bos_token_id=5)
    with SlotEngine(model) as engine:
        list(engine.generate([GenerationRequest(ids[0, :6], 5, 5), GenerationRequest(ids[1, :3], 5, 4)]))
    assert set(model.compiled_programs) == listed                  # greedy generation fetched no other program
    with pytest.raises(ValueError, match=r"unknown heads \['nope'\]"):
        model.compile_all(heads=("nope",))


def test_compile_all_lists_the_long_segment_programs_the_slot_engine_runs(tiny_checkpoint):
    """On XLA CPU a batch of 4 keeps 1 long slot (`slot_segments.py`): its split steps, reorders, moves and
    per-segment resizes are listed, so greedy translation with a move, and lockstep sampling whose caches grow,
    compile nothing more; `long_rows=0` lists the programs of an unsplit state."""
    path, hf = tiny_checkpoint
    model = NLLBForSampling.from_pretrained(path, batch_size=4, n_positions=[4, 8], encoder_buckets=[8]).to_neuron()
    if not model.programs.build_shapes.reads_stored_caches:
        pytest.skip("the caches are split only where a step reads every stored position")
    model.compile_all(heads=("greedy",))
    listed = set(model.programs.every_program(("greedy",)))
    steps = {(k.target_len, k.long_rows, k.long_len) for k in listed if isinstance(k, SlotStepKey)}
    assert steps == {(4, 1, 4), (4, 1, 8), (8, 1, 8)}                       # the long segment never the shorter
    assert any(k.kind == "slot_move" for k in listed)
    assert {k.part for k in listed if k.kind in ("slot_move", "slot_move_caches")} == {"take", "put"}
    shapes = model.programs.build_shapes
    for bad in (SlotMoveKey(8, "swap"), SlotMoveCachesKey(4, 1, 8, "swap")):   # a part that is not one: named
        with pytest.raises(ValueError, match=r"part must be one of \('take', 'put'\), got 'swap'"):
            bad.build(shapes)
    ids, mask = source_batch(hf.config.vocab_size, lengths=(6, 3, 5, 4, 7, 3))
    limits = (8, 2, 2, 3, 2, 2)             # line 0 outgrows bucket 4 in slot 0 and moves to slot 3 (line 3's)
    requests = [GenerationRequest(row[row != 1], 5, n) for row, n in zip(ids, limits)]
    with SlotEngine(model) as engine:
        assert engine.long_slots == 1
        list(engine.generate(requests))
        assert engine.stats().moves >= 1
    model.sample(ids[:4], mask[:4], max_new_tokens=6, forced_bos_token_id=5)   # lockstep caches grow 4 -> 8
    assert set(model.compiled_programs) == listed                          # nothing else fetched
    unsplit = model.programs.every_program(("greedy",), long_rows=0)
    assert not [k for k in unsplit if getattr(k, "long_rows", 0) or k.kind == "slot_move"]
    with pytest.raises(ValueError, match="long_rows must lie in"):
        model.programs.every_program(long_rows=4)


def copied_parameters(text: str) -> list[str]:
    """The entry parameters (by our names) that XLA's optimized module `text` copies whole: `copy(%param)`."""
    entry = text[text.index("\nENTRY"):]
    params = dict(re.findall(r"%([\w.\-]+) = [^\n]*? parameter\(\d+\), metadata=\{op_name=\"([\w.\-]+)\"", entry))
    return [params[name] for name in re.findall(r" copy\(%([\w.\-]+)\)", entry) if name in params]


def test_programs_that_update_the_state_in_place_copy_none_of_it(tiny_checkpoint):
    """Every listed program with aliased outputs but the reorders (gathers of rows of the caches they update) -- the
    slot engine's encoders, copies, steps, moves, the lockstep decoders -- updates its donated state in place: XLA's
    optimized module copies no parameter. A program that reads a row of a tensor it also updates in place, with no
    data dependency ordering the two, gets a copy of the whole tensor (a move swapping two slots in one program did:
    120 ms at the 600M shape instead of two rows). The one exception, by choice: the caches of a one-row segment
    (batch 1, or a one-row long segment) stored at up to `ONE_ROW_COPIES_UP_TO` positions, where XLA CPU's copies
    cost less than the attention form that avoids them (`decoder_layer.py`); past that they are not copied."""
    path, _ = tiny_checkpoint
    copied, exempt = {}, set()
    for batch in (4, 1):                      # batch 1: the lockstep decoders and slot steps of one row
        model = NLLBForSampling.from_pretrained(path, batch_size=batch, n_positions=[4, 8, 128],
                                                encoder_buckets=[8]).to_neuron()
        if model.runtime.compiled_text(model.programs.get(EncoderKey(8))) is None:
            pytest.skip("this backend does not show its optimized HLO")
        model.compile_all(heads=("greedy",))
        shapes = model.programs.build_shapes
        in_place = [key for key in model.programs.every_program(("greedy",)) if key.build(shapes).aliases
                    and key.kind not in ("reorder", "slot_reorder")]     # gathers: a permutation needs a copy
        kinds = {"slot_encoder", "slot_copy", "decoder"} | ({"slot_move", "slot_move_caches"} if batch == 4 else set())
        assert {key.kind for key in in_place} >= kinds
        for key in in_place:
            module = key.build(shapes)
            state = {param for _, param in module.aliases}
            one_row = {name for name, shape in module.params if name in state and shape.rank == 4
                       and shape.dims[0] == 1 and shape.dims[2] <= ONE_ROW_COPIES_UP_TO}       # [1, N, T, D] caches
            text = model.runtime.compiled_text(model.programs.get(key))
            names = [name for name in copied_parameters(text) if name in state]
            copied[batch, key] = [name for name in names if name not in one_row]
            exempt |= {(batch, key.kind, key.target_len) for name in names if name in one_row}
    assert {key: names for key, names in copied.items() if names} == {}
    assert {(1, "decoder", 8), (4, "slot_step", 4)} <= exempt              # what the exception covers: it is needed
    assert not {entry for entry in exempt if entry[2] == 128}              # one row at 128 positions: no copies
    cache = hlo.Shape(hlo.f32, (2, 2, 8, 4))                  # the heads-only form is for one row: misuse named
    with pytest.raises(ValueError, match="heads_batch_only is for one row, got 2"):
        hlo.build("two_rows", {"q": cache, "kv": cache, "mask": hlo.Shape(hlo.f32, (2, 8, 8))},
                  lambda p: {"ctx": layers.attention(p.q, p.kv, p.kv, p.mask, heads_batch_only=True)})


def test_compile_all_warm_runs_every_listed_program_once_on_zeros_and_changes_no_result(tiny_checkpoint,
                                                                                         monkeypatch):
    """`compile_all(warm=True)` runs each listed program once on zero inputs of its own (the one-time cost of a
    program's first call then falls there): every kind takes zeros, and the model's own results are unchanged."""
    from hlo.runtime import BoundProgram
    path, hf = tiny_checkpoint
    shape = dict(batch_size=2, n_positions=[4, 8], encoder_buckets=[8, 16])
    ids, mask = source_batch(hf.config.vocab_size, lengths=(6, 3))
    plain = NLLBForSampling.from_pretrained(path, **shape).to_neuron()
    expected = plain.sample(ids, mask, max_new_tokens=6, forced_bos_token_id=5)

    model = NLLBForSampling.from_pretrained(path, **shape).to_neuron()
    warmed, real = [], BoundProgram.warm_up

    def counted(self):
        warmed.append(self.program.name)
        real(self)

    monkeypatch.setattr(BoundProgram, "warm_up", counted)
    model.compile_all(warm=True)
    listed = model.program_builders()
    assert sorted(warmed) == sorted(build().name for build in listed.values())       # each once, every kind
    np.testing.assert_array_equal(model.sample(ids, mask, max_new_tokens=6, forced_bos_token_id=5), expected)
    requests = [GenerationRequest(row[row != 1], 5, 6) for row in ids]
    with SlotEngine(model) as engine:
        assert [out.tolist() for out in engine.generate(requests)] == [row.tolist() for row in expected]
