"""Compiled artifacts after use: `save()` stores every program compiled so far (sampling included) and every other
program of the shape, the slot engine's included, and a reload compiles nothing that could be stored, for `sample()`
and for the engine."""

from __future__ import annotations

import json

import numpy as np

from hlo.runtime.base import CompileEvent
from hlo.runtime.xla import clear_compile_cache
from nllb_neuronx import NLLBForSampling
from nllb_neuronx.engine import GenerationRequest, SlotEngine
from tests.conftest import source_batch

SHAPE = dict(batch_size=2, n_positions=[8], encoder_buckets=[16], backend="xla-cpu")


def _use(model, ids, mask):
    greedy = model.sample(ids, mask, max_new_tokens=4, forced_bos_token_id=5)
    drawn = model.sample(ids, mask, max_new_tokens=4, forced_bos_token_id=5, do_sample=True, top_k=3, seed=0)
    return greedy, drawn


def _use_engine(model, ids, mask):
    requests = [GenerationRequest(row[m > 0], 5, 6, num_beams=beams) for row, m, beams in zip(ids, mask, (1, 2))]
    with SlotEngine(model) as engine:
        return [out.tolist() for out in engine.generate(requests)]


def test_save_after_use_and_reload_compile_nothing_storable(tiny_checkpoint, tmp_path):
    path, hf = tiny_checkpoint
    ids, mask = source_batch(hf.config.vocab_size, lengths=(9, 5))
    clear_compile_cache()
    model = NLLBForSampling.from_pretrained(path, **SHAPE).to_neuron()
    greedy, drawn = _use(model, ids, mask)                     # compiles encoder, greedy and sampling heads
    slots = _use_engine(model, ids, mask)
    store = tmp_path / "artifacts"
    model.save(str(store))

    manifest = json.loads((store / "manifest.json").read_text())
    stored = {f.name.split(".")[0] for f in (store / "programs").iterdir()}
    assert set(manifest["programs"].values()) <= stored            # every listed program is written
    assert any("sample" in name for name in manifest["programs"])  # the sampling head too
    assert len(manifest["programs"]) == len(model.program_builders())  # every program of the shape, no other

    clear_compile_cache()                                          # a new process
    again = NLLBForSampling.from_pretrained(path, **SHAPE, compiled_dir=str(store)).to_neuron()
    events = []
    again.runtime.add_compile_observer(events.append)
    greedy_again, drawn_again = _use(again, ids, mask)
    np.testing.assert_array_equal(greedy_again, greedy)
    np.testing.assert_array_equal(drawn_again, drawn)
    assert _use_engine(again, ids, mask) == slots
    again.compile_all()
    assert [e.program for e in events if e.reason != CompileEvent.STORED_AS_HLO] == []
