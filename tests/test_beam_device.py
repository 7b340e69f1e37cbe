"""Beam search decided on the device (`beam_head.py`) with HF's bookkeeping on the host (`beam.py`).

The head alone against HF's step (torch log_softmax, HF's ForcedBOS processor, running scores, flat top-k over a
request's beams), at tp 1 and 2 with small sort tiles (the tiled path NLLB's vocabulary takes); then the slot engine
against HF `generate(num_beams=N)` on the trained toy model: 2 and 4 beams, two length penalties, lines that end on
EOS and lines cut at max_new_tokens, beam and greedy requests sharing steps.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import hlo
from hlo.runtime import PerRank, get_runtime
from hlo.targets import neuron
from hlo.types import f32, s32

from nllb_neuronx import NLLBForSampling, beam_head
from nllb_neuronx.engine import GenerationRequest, SlotEngine

VOCAB, PADDED, ROWS, TILE = 101, 104, 8, 16
GROUPS = np.array([0, 1, 0, 3, 3, 0, 3, 3], np.int32)      # request 0: slots 0, 2, 5; 3: slots 3, 4, 6, 7; 1 alone
FORCED = np.array([-1, -1, -1, 7, 7, -1, 7, 7], np.int32)  # request 3 at its first step, forced token 7
SCORES = np.array([-1.0, 0.0, -1.0, 0.0, -1e9, -2.5, -1e9, -1e9], np.float32)
K = beam_head.candidates_for(4)


def step_inputs(seed: int = 0) -> np.ndarray:
    """[PADDED, ROWS] logits with exact ties: slots 0 and 2 (beams 0 and 1 of request 0, equal scores) are equal,
    two tokens of slot 0 share its maximum, and the vocabulary's padding holds the largest values (never chosen)."""
    x = np.random.default_rng(seed).normal(0, 3, (PADDED, ROWS)).astype(np.float32)
    x[[5, 9], 0] = x[:, 0].max() + 1.0
    x[:, 2] = x[:, 0]
    x[VOCAB:] = 100.0
    return x


def hf_step(x: np.ndarray, rows: list[int], forced: int | None, scores: np.ndarray, keep: int):
    """HF _beam_search's candidates for one request (its beams in `rows`): (scores, tokens, source beams)."""
    from transformers.generation.logits_process import ForcedBOSTokenLogitsProcessor

    logits = torch.tensor(x[:VOCAB, rows].T)                                              # [beams, V]
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
    if forced is not None:
        log_probs = ForcedBOSTokenLogitsProcessor(forced)(torch.zeros(len(rows), 1, dtype=torch.long), log_probs)
    flat = (log_probs + torch.tensor(scores)[:, None]).reshape(-1).numpy()
    order = np.lexsort((np.arange(flat.size), -flat))[:keep]                             # stable: flat-index ties
    return flat[order], order % VOCAB, order // VOCAB


def run_head(x: np.ndarray, tp: int) -> dict[str, np.ndarray]:
    spec = hlo.ParamSpec(logits=f32[PADDED // tp, ROWS], forced=s32[ROWS], beam_score=f32[ROWS],
                         beam_group=s32[ROWS])
    module = hlo.build(f"beam_tp{tp}", spec, lambda p: beam_head.beam(p.logits, VOCAB, tp, p.forced, p.beam_score,
                                                                        p.beam_group, K, TILE))
    assert neuron.check(module, tp) == []
    assert all(v.operands[0].dims[v.attrs["dimensions"][0]] <= TILE
               for c in module.computations for v in c.instructions if v.opcode == "sort")
    logits = PerRank(np.split(x, tp, axis=0)) if tp > 1 else x
    out = get_runtime("xla-cpu", tp).compile(module)(logits=logits, forced=FORCED, beam_score=SCORES,
                                                     beam_group=GROUPS)
    return {name: value.numpy(0) for name, value in out.items()}


@pytest.mark.parametrize("tp", [1, 2])
def test_beam_head_gives_each_request_hfs_candidates(tp):
    x = step_inputs()
    x[3, 1] = np.nan                                                       # slot 1's request fails alone
    out = run_head(x, tp)
    assert out["beam_scores"].shape == out["beam_tokens"].shape == out["beam_sources"].shape == (ROWS, K)
    for group in (0, 3):
        rows = np.flatnonzero(GROUPS == group).tolist()
        forced = 7 if FORCED[rows[0]] >= 0 else None
        scores, tokens, beams = hf_step(x, rows, forced, SCORES[rows], K)
        for row in rows:                                                   # every slot of the request: the same
            np.testing.assert_array_equal(out["beam_tokens"][row], tokens, err_msg=f"slot {row}")
            np.testing.assert_array_equal(out["beam_sources"][row], beams, err_msg=f"slot {row}")
            np.testing.assert_allclose(out["beam_scores"][row], scores, rtol=1e-6, atol=1e-5)
    # the ties, in flat-index order (beam * V + token): request 0's beams 0 and 1 tie on every token, and each has
    # two equal maxima (tokens 5 and 9)
    assert out["beam_tokens"][0, :4].tolist() == [5, 9, 5, 9] and out["beam_sources"][0, :4].tolist() == [0, 0, 1, 1]
    # request 3's first step: the forced token from every beam (HF: beams 1.. at -1e9), then -inf candidates
    assert out["beam_tokens"][3, :4].tolist() == [7] * 4 and out["beam_sources"][3, :4].tolist() == [0, 1, 2, 3]
    assert np.isneginf(out["beam_scores"][3, 4:]).all()
    assert (out["beam_tokens"][1] == -1).all()                             # NaN logits: -1, that request only
    greedy = np.argmax(x[:VOCAB], axis=0)
    others = [0, 2, 3, 4, 5, 6, 7]
    assert out["next_token"][1] == -1 and (out["next_token"][others] == greedy[others]).all()  # the greedy token


# --------------------------------------------------------------------------------------------- the slot engine
SHAPE = dict(batch_size=4, n_positions=[32], encoder_buckets=[32])


@pytest.fixture(scope="module")
def toy(trained_model):
    """(HF model, the engine's model, [(source ids, forced language id)] of 6 held-out lines)."""
    from nllb_neuronx import toy_task

    path, hf, tokenizer = trained_model
    lines = toy_task.corpus(toy_task.TrainConfig().task, tokenizer, 6, max_tokens=24, median_tokens=10, seed=11)
    forced = tokenizer.convert_tokens_to_ids(toy_task.TGT_LANG)
    sources = [tokenizer(text)["input_ids"] for text, _ in lines]
    return hf, NLLBForSampling.from_pretrained(path, **SHAPE).to_neuron(), [(s, forced) for s in sources]


def hf_beams(hf, request: GenerationRequest) -> list[int]:
    """HF generate() on that line alone (torch on one thread: several times faster on the busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _hf_beams(hf, request)
    finally:
        torch.set_num_threads(threads)


def _hf_beams(hf, request: GenerationRequest) -> list[int]:
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor([list(request.input_ids)]), num_beams=request.num_beams,
                          max_new_tokens=request.max_new_tokens, length_penalty=request.length_penalty,
                          forced_bos_token_id=request.forced_bos_token_id, do_sample=False)
    return out[0].tolist()


def test_engine_beams_equal_hf_generate_alone(toy):
    """2 and 4 beams, length penalties 1.0 and 2.0 (longer hypotheses favoured) and 0.5, lines that end on EOS and
    lines cut at a small max_new_tokens, beam and greedy requests in the same steps; each equals HF generate() on
    that line alone, and no step of the engine asked for the logits."""
    hf, model, lines = toy
    settings = [(4, 1.0, 32), (2, 2.0, 32), (2, 1.0, 4), (1, 1.0, 32), (4, 0.5, 6), (2, 1.0, 32), (1, 1.0, 5),
                (2, 0.5, 32), (3, 1.0, 1)]
    requests = [GenerationRequest(source, forced, max_new, num_beams=beams, length_penalty=penalty)
                for (source, forced), (beams, penalty, max_new) in zip(lines * 2, settings)]
    seen = []
    model.add_program_observer(lambda event: seen.append(event.key))
    with SlotEngine(model) as engine:
        results = list(engine.generate(requests))
    eos = hf.config.eos_token_id
    for i, (request, ids) in enumerate(zip(requests, results)):
        assert ids.tolist() == hf_beams(hf, request), f"request {i}"
    assert any(ids[-1] == eos for r, ids in zip(requests, results) if r.num_beams > 1)        # ended on EOS
    assert any(len(ids) == 1 + r.max_new_tokens and ids[-1] != eos for r, ids in zip(requests, results)
               if r.num_beams > 1)                                                              # cut at the limit
    assert {getattr(key, "head", None) for key in seen} >= {"beam"} and "logits" not in {
        getattr(key, "head", None) for key in seen}
    greedy = [hf_beams(hf, replace(r, num_beams=1, length_penalty=1.0)) for r in requests]
    assert sum(ids.tolist() != g for ids, g in zip(results, greedy)) >= 2                   # the beams searched
    assert results[1].tolist() != hf_beams(hf, replace(requests[1], length_penalty=1.0))    # the penalty counted


def test_beam_step_returns_only_candidates(toy):
    """The beam slot step's outputs besides the caches: [B, K] candidates and [B] tokens, K = 2 x batch size."""
    _, model, _ = toy
    from nllb_neuronx.program_key import SlotStepKey

    builders = model.program_builders()
    (key,) = [key for key in builders if isinstance(key, SlotStepKey) and key.head == "beam"]  # (long segment or not)
    assert (key.source_len, key.target_len) == (32, 32)
    module = builders[key]()
    b, k = SHAPE["batch_size"], beam_head.candidates_for(SHAPE["batch_size"])
    outputs = {name: list(shape.dims) for name, shape in module.outputs if "cache" not in name}
    assert outputs == {"beam_scores": [b, k], "beam_tokens": [b, k], "beam_sources": [b, k], "next_token": [b]}


def test_candidate_count_is_checked():
    assert beam_head.candidates_for(8) == 16                                   # HF: 2 x num_beams
    with pytest.raises(ValueError, match="beam search on the device serves 1 to 4096 beams"):
        beam_head.candidates_for(4097)
