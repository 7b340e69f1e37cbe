"""The slot engine against HF transformers, line by line (f32, greedy): programs, refills, threads, cancel, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from nllb_neuronx import NLLBForSampling
from nllb_neuronx.decoder_layer import ONE_ROW_COPIES_UP_TO
from nllb_neuronx.engine import EngineClosed, GenerationRequest, QueueFull, SamplingParams, SlotEngine
from nllb_neuronx.program_key import SlotCopyKey, SlotEncoderKey
from nllb_neuronx.slot_state import SlotState
from tests.conftest import TOLERANCE

BUCKETS = dict(n_positions=[8, 24], encoder_buckets=[8, 16])
SLOTS = 4


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    path, _ = tiny_checkpoint
    return NLLBForSampling.from_pretrained(path, batch_size=SLOTS, **BUCKETS).to_neuron()


@pytest.fixture(scope="module")
def engine(model):
    with SlotEngine(model) as engine:
        yield engine


def source(length: int, rng, vocab: int) -> list[int]:
    """A source line as a tokenizer gives it: ids, then EOS."""
    return [int(i) for i in rng.integers(4, vocab, length - 1)] + [2]


def hf_line(hf, request: GenerationRequest, num_beams: int | None = None) -> list[int]:
    """HF generate() on that one line alone."""
    forced = {} if request.forced_bos_token_id is None else {"forced_bos_token_id": request.forced_bos_token_id}
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor([list(request.input_ids)]), max_new_tokens=request.max_new_tokens,
                          num_beams=num_beams or request.num_beams, do_sample=False, **forced)
    return out[0].tolist()


def corpus(vocab: int, lengths, seed: int = 0) -> list[GenerationRequest]:
    rng = np.random.default_rng(seed)
    return [GenerationRequest(source(n, rng, vocab), forced_bos_token_id=None if i % 4 == 3 else 5 + i % 3,
                              max_new_tokens=int(rng.integers(2, 24)))
            for i, n in enumerate(lengths)]


@pytest.mark.parametrize("tp,long_rows", [(1, 0), (1, 1), (2, None)])
def test_slot_steps_match_hf_logits_with_staggered_rows_and_reused_slots(model, tiny_checkpoint, tp, long_rows):
    """Rows at different positions and source buckets share steps; a slot that held a long source and a long target
    is refilled with a short one, whose logits must not see what was left behind. With a long cache segment (slot 3:
    line b) the segments are stored at their own lengths."""
    path, hf = tiny_checkpoint
    vocab, rng = hf.config.vocab_size, np.random.default_rng(7)
    if tp > 1:
        model = NLLBForSampling.from_pretrained(path, batch_size=SLOTS, tp_degree=tp, **BUCKETS).to_neuron()
    state = SlotState(model, long_rows)
    split = state.long_rows > 0
    assert state.long_slots == (range(3, 4) if split else range(0))
    lines = {name: (np.array(source(n, rng, vocab)), np.array([2] + [int(t) for t in rng.integers(4, vocab, p - 1)]))
             for name, n, p in [("a", 14, 12), ("b", 5, 9), ("c", 7, 10), ("e", 3, 6), ("d", 4, 11)]}
    with torch.no_grad():
        ref = {name: hf(input_ids=torch.tensor(src[None]), decoder_input_ids=torch.tensor(tgt[None])).logits[0].numpy()
               for name, (src, tgt) in lines.items()}
    slots: dict[int, tuple[str, int, int]] = {}                     # slot -> (line, position, bucket)

    def insert(pairs):
        bucket = state.insert([slot for slot, _ in pairs], [lines[name][0] for _, name in pairs])
        slots.update({slot: (name, 0, bucket) for slot, name in pairs})

    insert([(3, "b"), (0, "e")])                                    # two rows in one call, slots out of order
    insert([(2, "a")])                                              # the 16 bucket
    stored, long = [state.stored_lengths], []
    for step in range(23):                                         # d, the last, ends at step 22
        if step == 3:
            insert([(1, "c")])                                      # joins three rows already under way
        if step == 12:
            insert([(2, "d")])                                      # reuses a's slot: a 16 source, 12 positions
        tokens, positions, active = np.zeros(SLOTS, np.int64), np.zeros(SLOTS, np.int64), np.zeros(SLOTS, bool)
        for slot, (name, pos, _) in slots.items():
            tokens[slot], positions[slot], active[slot] = lines[name][1][pos], pos, True
        logits = state.step(tokens, positions, active, max(b for _, _, b in slots.values()), head="logits")
        stored.append(state.stored_lengths)
        long.append(state.stored_target_lengths[-1])
        for slot, (name, pos, bucket) in list(slots.items()):
            np.testing.assert_allclose(logits[slot], ref[name][pos], atol=TOLERANCE["logits"],
                                       err_msg=f"line {name} position {pos} (step {step}, slot {slot})")
            done = pos + 1 == len(lines[name][1])
            if done:
                del slots[slot]
            else:
                slots[slot] = (name, pos + 1, bucket)
    assert not slots                                                # every line ran to its end
    assert state.insert_sizes == (1, 2, 4)
    if model.programs.build_shapes.reads_stored_caches:             # XLA CPU: the state follows the active slots
        # a's 16 source grows the source side at its insert, its 9th position the target side (to 16, halfway
        # between the buckets 8 and 24: `slot_target_lengths`); once a is done the source side shrinks (step 12),
        # once c is done the target side too (step 13), and d grows it again
        assert stored[:2] == [(8, 16), (8, 16)] and stored[9] == (16, 16)
        assert stored[13:15] == [(16, 8), (8, 8)] and stored[-1] == (16, 8)
        # the long segment (b's slot) is stored at least as long as the short one (a slot may move into it)
        assert all(t_long >= t_short for t_long, (t_short, _) in zip(long, stored[1:]))
        assert len(state.stored_target_lengths) == 1 + split
    else:                                                           # one size: the largest buckets
        assert set(stored) == {(24, 16)}


def test_every_line_equals_hf_alone_with_slots_refilled(engine, tiny_checkpoint):
    _, hf = tiny_checkpoint
    requests = corpus(hf.config.vocab_size, lengths=[3, 16, 6, 2, 14, 9, 5, 12, 4, 7, 15, 8])  # 12 lines, 4 slots
    before = engine.stats()
    results = list(engine.generate(requests, read_ahead=6))
    for i, (request, ids) in enumerate(zip(requests, results)):
        assert ids.dtype == np.int64
        assert ids.tolist() == hf_line(hf, request), f"line {i} ({len(request.input_ids)} source tokens)"
    stats = engine.stats()
    steps = stats.slot_steps - before.slot_steps
    useful = stats.useful_slot_steps - before.useful_slot_steps
    assert steps % SLOTS == 0 and 0 < useful <= steps
    assert useful == sum(len(ids) - 1 for ids in results)     # one step per generated token, the forced one too
    assert stats.active_slots == 0 and stats.queue_depth == 0 and 0 < stats.occupancy <= 1


def test_admit_batch_encodes_sub_batches_and_changes_no_line(model, tiny_checkpoint):
    _, hf = tiny_checkpoint
    requests = corpus(hf.config.vocab_size, lengths=[3, 16, 6, 2, 14, 9, 5, 12, 4, 7, 15, 8])
    runs = {}
    for admit_batch in (1, 2):
        with SlotEngine(model, admit_batch=admit_batch) as engine:
            runs[admit_batch] = ([ids.tolist() for ids in engine.generate(requests)], engine.stats())
    assert runs[2][0] == runs[1][0] == [hf_line(hf, r) for r in requests]
    one, two = runs[1][1], runs[2][1]
    assert two.encoder_calls <= one.encoder_calls                # no more (larger) slot-encoder calls
    assert two.steps == two.slot_steps // SLOTS and two.step_seconds > 0 and two.encoder_seconds > 0
    with pytest.raises(ValueError, match="admit_batch"):
        SlotEngine(model, admit_batch=SLOTS + 1)


@pytest.mark.parametrize("admission", ["fifo", "longest_first"])
def test_encode_ahead_batches_the_encoder_and_changes_no_line(model, tiny_checkpoint, admission):
    """Queued requests encoded up to SLOTS at a time into staging rows, copied into slots as they free: every line
    still equals HF's alone, in far fewer encoder calls than one per line; beams and seeded sampling unchanged."""
    _, hf = tiny_checkpoint
    requests = corpus(hf.config.vocab_size, lengths=[3, 16, 6, 2, 14, 9, 5, 12, 4, 7, 15, 8, 3, 11, 6, 13], seed=4)
    beam = GenerationRequest(requests[1].input_ids, forced_bos_token_id=5, max_new_tokens=10, num_beams=2)
    sampled = GenerationRequest(requests[2].input_ids, forced_bos_token_id=6, max_new_tokens=12,
                                sampling=SamplingParams(temperature=0.8, top_k=20, seed=11))
    runs = {}
    for ahead in (False, True):
        with SlotEngine(model, admission=admission, encode_ahead=ahead) as engine:
            assert engine.encode_ahead is ahead
            lines = [ids.tolist() for ids in engine.generate(requests)]
            stats = engine.stats()
            others = [engine.submit(r).result().tolist() for r in (beam, sampled)]
            runs[ahead] = (lines, stats, others)
            assert engine.stats().queue_depth == 0 and engine.stats().active_slots == 0
    assert runs[True][0] == runs[False][0] == [hf_line(hf, r) for r in requests]
    assert runs[True][2] == runs[False][2]
    assert runs[True][2][0] == hf_line(hf, beam)
    plain, ahead = runs[False][1], runs[True][1]
    assert ahead.encoder_calls < plain.encoder_calls                          # sub-batches, not one row a call
    assert ahead.useful_slot_steps == plain.useful_slot_steps
    with pytest.raises(ValueError, match="encode_ahead"):
        SlotEngine(model, encode_ahead="yes")


def test_encode_ahead_between_buckets_changes_no_line(tiny_checkpoint):
    """On XLA CPU requests encoded ahead run the encoder at a quarter of their bucket's span (buckets 16, 32: lengths
    8, 16, 24, 32), wait in a staging area at their bucket, and are copied into a state stored at least that long:
    every line still equals HF's alone, and the programs fetched are the listed ones."""
    path, hf = tiny_checkpoint
    model = NLLBForSampling.from_pretrained(path, batch_size=SLOTS, n_positions=[8, 24],
                                            encoder_buckets=[16, 32]).to_neuron()
    shapes = model.programs.build_shapes
    if not shapes.reads_stored_caches:
        pytest.skip("the finer encode-ahead lengths are XLA CPU's")
    assert shapes.stage_lengths() == (8, 16, 24, 32)
    assert [shapes.stage_length(n) for n in (1, 8, 9, 17, 25, 32)] == [8, 8, 16, 24, 32, 32]
    # longest first, groups of 4: encoded at 32 and 24 positions (staged at 32), at 16 and 8 (staged at 16, copied in
    # while long lines still run: the state stored at 32)
    requests = corpus(hf.config.vocab_size, lengths=[30, 20, 22, 19, 5, 3, 7, 29, 6, 4, 2, 13, 28, 11, 27, 18], seed=6)
    with SlotEngine(model, admission="longest_first") as engine:
        assert [ids.tolist() for ids in engine.generate(requests)] == [hf_line(hf, r) for r in requests]
    fetched = set(model.compiled_programs)
    encoders = {(k.source_len, k.stored_len) for k in fetched if isinstance(k, SlotEncoderKey)}
    assert {(24, 32), (32, 32), (8, 16)} <= encoders
    assert any(isinstance(k, SlotCopyKey) and k.staged_len < k.stored_len for k in fetched)
    assert fetched <= set(model.programs.every_program())
    with pytest.raises(ValueError, match="longer than the largest encoder bucket 32"):
        shapes.stage_length(33)
    state = SlotState(model)                  # misuse of its public calls is named before any device call
    with pytest.raises(ValueError, match="one source bucket; group them by bucket"):
        state.stage([np.arange(4, 9), np.arange(4, 24)])                           # buckets 16 and 32
    staged = state.stage([np.arange(4, 9)] * 3)
    with pytest.raises(ValueError, match="2 sources to stage, 1 staging rows free of 4"):
        state.stage([np.arange(4, 9)] * 2, held=staged)
    with pytest.raises(ValueError, match=r"a short slot \(0\.\.2\) with a long one \(\[3\]\), got 1 and 2"):
        state.move(1, 2)


def test_the_furthest_rows_move_into_the_long_segment_and_no_line_changes(model, tiny_checkpoint):
    """A long line admitted into a short slot moves into the long one when it outgrows the first target bucket (8),
    swapping with the long slot's shorter line, so the short segment's steps keep reading 8 positions while the long
    one reads 24; every line equals HF's alone, as without a long segment."""
    _, hf = tiny_checkpoint
    requests = corpus(hf.config.vocab_size, lengths=[3, 16, 6, 2, 14, 9, 5, 12, 4, 7, 15, 8], seed=5)
    limits = [23, 5, 6, 20, 4, 6, 5, 7, 3, 6, 5, 6]                  # lines 0 and 3 run long, in slots 0 and 3
    requests = [GenerationRequest(r.input_ids, r.forced_bos_token_id, max_new_tokens=n)
                for r, n in zip(requests, limits)]
    runs = {}
    for long_slots in (0, 1, 2):
        model.programs.forget()
        with SlotEngine(model, long_slots=long_slots) as engine:
            assert engine.long_slots == long_slots
            runs[long_slots] = ([ids.tolist() for ids in engine.generate(requests)], engine.stats())
            steps = [key for key in model.compiled_programs if key.kind == "slot_step"]
        if long_slots == 1:     # line 0 moved into slot 3: short steps at 8 while it ran on at 24
            assert any(key.long_rows == 1 and (key.target_len, key.long_len) == (8, 24) for key in steps)
    assert runs[0][0] == runs[1][0] == runs[2][0] == [hf_line(hf, r) for r in requests]
    assert runs[0][1].moves == 0 and runs[1][1].moves >= 1 and runs[2][1].moves >= 1
    assert runs[0][1].useful_slot_steps == runs[1][1].useful_slot_steps == runs[2][1].useful_slot_steps
    for bad in (SLOTS, -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"long_slots must be None .* or an integer from 0 to {SLOTS - 1}"):
            SlotEngine(model, long_slots=bad)
    with pytest.raises(ValueError, match=r"long_rows must lie in \[0, 4\) for 4 slots, got 1.5"):
        SlotState(model, 1.5)                                     # not cut to 1


def test_longest_first_admission_changes_no_line_and_keeps_the_order(model, tiny_checkpoint):
    _, hf = tiny_checkpoint
    requests = corpus(hf.config.vocab_size, lengths=[3, 5, 2, 6, 4, 9, 3, 7, 16, 14], seed=3)
    with SlotEngine(model, admission="longest_first") as engine:
        assert engine.admission == "longest_first"
        results = [ids.tolist() for ids in engine.generate(requests)]
        stats = engine.stats()
    assert results == [hf_line(hf, r) for r in requests]
    assert stats.useful_slot_steps == sum(len(ids) - 1 for ids in results)
    with pytest.raises(ValueError, match="admission must be one of"):
        SlotEngine(model, admission="shortest")


def test_concurrent_submit_from_threads(engine, tiny_checkpoint):
    _, hf = tiny_checkpoint
    requests = corpus(hf.config.vocab_size, lengths=[4, 11, 2, 16, 7, 9, 3, 13, 6], seed=1)
    futures = [None] * len(requests)

    def submit_every_third(first: int):
        for i in range(first, len(requests), 3):
            futures[i] = engine.submit(requests[i])

    threads = [threading.Thread(target=submit_every_third, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (request, future) in enumerate(zip(requests, futures)):
        assert future.result(timeout=120).tolist() == hf_line(hf, request), f"line {i}"


def test_cancel_frees_the_slot_and_the_rest_are_unchanged(engine, tiny_checkpoint):
    _, hf = tiny_checkpoint
    requests = corpus(hf.config.vocab_size, lengths=[5, 9, 13, 3, 8, 6, 10], seed=2)
    requests = [GenerationRequest(r.input_ids, 5, max_new_tokens=23) for r in requests]
    futures = [engine.submit(r) for r in requests]
    cancelled = {i: futures[i].cancel() for i in (1, 5)}       # an early one (likely in a slot) and a queued one
    assert any(cancelled.values())
    for i, (request, future) in enumerate(zip(requests, futures)):
        if cancelled.get(i):
            assert future.cancelled()
        else:
            assert future.result(timeout=120).tolist() == hf_line(hf, request), f"line {i}"
    assert engine.stats().active_slots == 0


def test_invalid_requests_fail_their_own_future(engine, model, tiny_checkpoint):
    _, hf = tiny_checkpoint
    good = corpus(hf.config.vocab_size, lengths=[6])[0]
    bad = {
        "longer than the largest encoder bucket": GenerationRequest(list(range(4, 21)) + [2], 5, 4),
        "max_new_tokens": GenerationRequest([7, 2], 5, 25),
        "input_ids must lie in": GenerationRequest([7, 500, 2], 5, 4),
        "non-empty": GenerationRequest([], 5, 4),
        "forced_bos_token_id": GenerationRequest([7, 2], -3, 4),
    }
    futures = {message: engine.submit(request) for message, request in bad.items()}
    future = engine.submit(good)
    for message, f in futures.items():
        with pytest.raises(ValueError, match=message):
            f.result(timeout=10)
    with pytest.raises(ValueError, match="num_beams"):
        engine.submit(GenerationRequest([7, 2], 5, 4, num_beams=SLOTS + 1)).result(timeout=10)
    with pytest.raises(ValueError, match="beam search with sampling"):
        engine.submit(GenerationRequest([7, 2], 5, 4, num_beams=2, sampling=SamplingParams())).result(timeout=10)
    with pytest.raises(ValueError, match="top_k=300 exceeds max_top_k=256"):
        engine.submit(GenerationRequest([7, 2], 5, 4, sampling=SamplingParams(top_k=300))).result(timeout=10)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=0.0)
    assert future.result(timeout=60).tolist() == hf_line(hf, good)
    # nothing to decode: the forced token alone (max_new_tokens=1), as HF
    short = GenerationRequest([9, 2], 5, 1)
    assert engine.submit(short).result(timeout=10).tolist() == hf_line(hf, short)


def test_queue_full_is_typed_and_a_failed_device_call_fails_only_what_is_in_flight(model, tiny_checkpoint,
                                                                                    monkeypatch):
    _, hf = tiny_checkpoint
    requests = [GenerationRequest(r.input_ids, 5, max_new_tokens=23)
                for r in corpus(hf.config.vocab_size, lengths=[5, 9, 3, 8, 6, 4, 7, 10], seed=3)]
    engine = SlotEngine(model, max_queue=2)
    try:
        accepted = []
        with pytest.raises(QueueFull):
            for request in requests * 4:                        # 4 slots + 2 queued at most, unless lines finish
                accepted.append((request, engine.submit(request)))
        for request, future in accepted:
            assert future.result(timeout=120).tolist() == hf_line(hf, request)

        real, calls = model.run_program, []

        def fail_once(key, **inputs):                          # the device call fails, as a lost device would
            calls.append(key)
            if len(calls) == 3:
                raise RuntimeError("device lost")
            return real(key, **inputs)

        monkeypatch.setattr(model, "run_program", fail_once)
        futures = [engine.submit(r) for r in requests[:2]]
        errors = [f.exception(timeout=120) for f in futures]
        assert any(isinstance(e, RuntimeError) and "device lost" in str(e) for e in errors)
        monkeypatch.setattr(model, "run_program", real)
        for request in requests[2:5]:                          # the engine carries on, with a fresh state
            assert engine.submit(request).result(timeout=120).tolist() == hf_line(hf, request)
    finally:
        engine.close(drain=False)
    with pytest.raises(EngineClosed):
        engine.submit(requests[0])


def test_close_without_drain_cancels_what_is_left(model, tiny_checkpoint):
    _, hf = tiny_checkpoint
    requests = [GenerationRequest(r.input_ids, 5, max_new_tokens=23)
                for r in corpus(hf.config.vocab_size, lengths=[5, 9, 3, 8, 6, 4, 7, 10, 11, 12], seed=4)]
    engine = SlotEngine(model)
    futures = [engine.submit(r) for r in requests]
    engine.close(drain=False)
    assert all(f.done() for f in futures)
    assert any(f.cancelled() for f in futures)
    for request, future in zip(requests, futures):
        if not future.cancelled():
            assert future.result().tolist() == hf_line(hf, request)


def test_sampled_requests_depend_only_on_their_seed_and_share_steps_with_greedy(engine, tiny_checkpoint):
    """A seeded request draws the same ids alone and in a busy batch (other slots, greedy and sampled neighbours);
    greedy requests in that batch stay token-exact with HF; every drawn token lies in the top_k of HF's logits for
    its prefix; different seeds draw differently."""
    _, hf = tiny_checkpoint
    vocab, rng = hf.config.vocab_size, np.random.default_rng(5)
    line = source(9, rng, vocab)
    sampled = GenerationRequest(line, 5, max_new_tokens=20, sampling=SamplingParams(temperature=1.5, top_k=3, seed=11))
    alone = engine.submit(sampled).result(timeout=120)
    greedy = corpus(vocab, lengths=[4, 13, 7, 10, 3, 15], seed=6)
    others = [GenerationRequest(source(n, rng, vocab), 6, max_new_tokens=23,
                                sampling=SamplingParams(temperature=t, top_p=0.9, seed=s))
              for n, t, s in [(6, 0.7, 1), (12, 1.2, 2), (3, 2.0, 3)]]
    busy = [greedy[0], others[0], greedy[1], others[1], sampled, greedy[2], others[2], *greedy[3:], sampled]
    results = list(engine.generate(busy))
    assert results[4].tolist() == alone.tolist() and results[-1].tolist() == alone.tolist()
    for request, ids in zip(busy, results):
        if request.sampling is None:
            assert ids.tolist() == hf_line(hf, request)
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([line]), decoder_input_ids=torch.tensor([alone[:-1].tolist()])).logits[0]
    top3 = torch.topk(logits, 3).indices.numpy()
    assert all(alone[t + 1] in top3[t] for t in range(2, len(alone) - 1))   # after start and the forced token
    reseeded = GenerationRequest(line, 5, max_new_tokens=20, sampling=SamplingParams(temperature=1.5, top_k=3, seed=12))
    assert engine.submit(reseeded).result(timeout=120).tolist() != alone.tolist()


@pytest.fixture(scope="module")
def beam_checkpoint(tmp_path_factory):
    """A tiny random model whose beams often differ from greedy (large weights: clear logit gaps, few near-ties) and
    that stops: its EOS is made a token it often produces (58)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    from tests.conftest import TINY_CONFIGS

    torch.manual_seed(0)
    config = M2M100Config(max_position_embeddings=128, init_std=0.5, dropout=0.0, attention_dropout=0.0,
                          eos_token_id=58, **TINY_CONFIGS["tiny"])
    hf = M2M100ForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("beams")
    hf.save_pretrained(path)
    return str(path), hf


def test_beams_take_slots_and_equal_hf_beam_search_alone(beam_checkpoint):
    path, hf = beam_checkpoint
    model = NLLBForSampling.from_pretrained(path, batch_size=SLOTS, **BUCKETS).to_neuron()
    rng = np.random.default_rng(0)
    requests = [GenerationRequest(source(n, rng, hf.config.vocab_size), forced_bos_token_id=5 if i % 3 else None,
                                  max_new_tokens=[4, 20, 11, 7, 22][i % 5], num_beams=1 + i % SLOTS)
                for i, n in enumerate([3, 14, 6, 16, 2, 9, 12, 5, 7, 10])]
    with SlotEngine(model) as engine:
        results = list(engine.generate(requests))
    differ = 0
    for i, (request, ids) in enumerate(zip(requests, results)):
        assert ids.tolist() == hf_line(hf, request), f"line {i} ({request.num_beams} beams)"
        differ += request.num_beams > 1 and ids.tolist() != hf_line(hf, request, num_beams=1)
    assert differ >= 3                                            # the beams did search: not greedy in disguise
    assert any(ids[-1] == 58 and len(ids) < 1 + r.max_new_tokens for r, ids in zip(requests, results))  # EOS


def test_one_row_stored_past_64_positions_matches_hf(tiny_checkpoint):
    """A segment of one row stored at more than `ONE_ROW_COPIES_UP_TO` positions attends with the dots batched over
    the heads only (`layers.attention(heads_batch_only=True)`): batch-1 lockstep logits through 70 positions (stored
    at 128 from position 8 on) equal HF's, and so does every line of a slot engine whose one-row long segment runs
    to 41 positions (stored at 72 on XLA CPU, `slot_target_lengths`) while the short one stays at 8."""
    path, hf = tiny_checkpoint
    buckets = dict(n_positions=[8, 128], encoder_buckets=[8, 16])
    rng = np.random.default_rng(3)
    ids = np.array([source(11, rng, hf.config.vocab_size)])
    targets = np.concatenate([[2], rng.integers(4, hf.config.vocab_size, 69)])[None]           # [1, 70]
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(targets)).logits.numpy()[0]
    lockstep = NLLBForSampling.from_pretrained(path, batch_size=1, **buckets).to_neuron()
    lockstep.encode(ids)
    logits = np.stack([lockstep.decode_step(targets[:, t])[0] for t in range(targets.shape[1])])
    assert lockstep.cache_length == 128 and np.abs(logits - ref).max() < TOLERANCE["logits"]

    model = NLLBForSampling.from_pretrained(path, batch_size=SLOTS, **buckets).to_neuron()
    requests = corpus(hf.config.vocab_size, lengths=[9, 4, 6, 5, 7], seed=4)
    requests = [GenerationRequest(r.input_ids, r.forced_bos_token_id, max_new_tokens=n)
                for r, n in zip(requests, [40, 5, 6, 4, 6])]
    with SlotEngine(model, long_slots=1) as engine:
        assert [ids.tolist() for ids in engine.generate(requests)] == [hf_line(hf, r) for r in requests]
    long = model.programs.build_shapes.slot_target_length(41)                 # XLA CPU 72 (halfway), else 128
    assert long > ONE_ROW_COPIES_UP_TO
    assert any(key.kind == "slot_step" and key.long_len == long and key.target_len == 8
               for key in model.compiled_programs)


def test_slot_caches_are_stored_halfway_between_target_buckets(tiny_checkpoint):
    """On XLA CPU the slot engine stores and reads its caches at the target buckets and halfway between each two
    (`ProgramShapes.slot_target_lengths`), the lockstep path at the buckets: lines that run past the buckets beside
    short ones, in one cache segment or two, each equal HF's alone; steps read at the halfway lengths; every program
    fetched is listed."""
    path, hf = tiny_checkpoint
    model = NLLBForSampling.from_pretrained(path, batch_size=SLOTS, n_positions=[8, 24, 40],
                                            encoder_buckets=[8, 16]).to_neuron()
    shapes = model.programs.build_shapes
    if not shapes.reads_stored_caches:
        pytest.skip("the halfway lengths are XLA CPU's (elsewhere a step reads its bucket of the largest)")
    assert shapes.slot_target_lengths() == (8, 16, 24, 32, 40)
    assert shapes.for_backend("neuron").slot_target_lengths() == (8, 24, 40)
    assert [shapes.slot_target_length(n) for n in (1, 8, 9, 17, 25, 40)] == [8, 8, 16, 24, 32, 40]
    with pytest.raises(ValueError, match="exceeds the largest decoder bucket 40"):
        shapes.slot_target_length(41)
    requests = corpus(hf.config.vocab_size, lengths=[9, 4, 6, 5, 7, 3], seed=5)
    requests = [GenerationRequest(r.input_ids, r.forced_bos_token_id, max_new_tokens=n)
                for r, n in zip(requests, [30, 12, 20, 6, 14, 5])]
    expected = [hf_line(hf, r) for r in requests]
    for long_slots in (0, 1):
        with SlotEngine(model, long_slots=long_slots) as engine:
            assert [ids.tolist() for ids in engine.generate(requests)] == expected, f"long_slots={long_slots}"
    fetched = set(model.compiled_programs)
    read = {getattr(k, name, 0) for k in fetched if k.kind in ("slot_step", "decoder")
            for name in ("target_len", "long_len")}
    assert {16, 32} <= read
    assert fetched <= {*model.programs.every_program(), *model.programs.every_program(long_rows=0)}
