"""nllb_neuronx's beam search in the generation benchmark: the slot engine, whose beam head decides each step on the
device (only [B, 2B] candidates reach the host; `nllb_neuronx/beam_head.py`), timed as CTranslate2's beams are.

Every row is one `GenerationRequest(num_beams=N)` (N slots each; the model is compiled for rows x N slots), all
submitted at once to a `SlotEngine` made before the timed runs. A run's wall time covers the slot encoder, every
decode step, the cache reorders and the host's bookkeeping, as CT2's `translate_batch` total covers its encoder and
steps. ms/step = total / decode steps the engine ran (from its public `stats()`: slot-steps / slots), p50 = p90.
Random weights almost never rank EOS among a beam's best candidates, so the engine runs the requested
`new_tokens` steps (the step count is measured, not assumed).
"""

from __future__ import annotations

import time

import numpy as np

TIMING = ("SlotEngine with the device beam head: wall time of all rows' requests submitted at once (slot encoder, "
          "decode steps, cache reorders, host bookkeeping); per-step = total / decode steps run (engine stats), "
          "p50 = p90, as CT2's beams")


def beam_runner(model, ids: np.ndarray, new_tokens: int, beams: int, lang_id: int, log=None):
    """(run_once, close): run_once() returns one run's figures in engines.Bench's layout; `log` gets each run's
    decode-step count."""
    from nllb_neuronx.engine import GenerationRequest, SlotEngine

    engine = SlotEngine(model)
    requests = [GenerationRequest([int(i) for i in row], lang_id, new_tokens, num_beams=beams) for row in ids]

    def run_once() -> dict:
        before = engine.stats()
        t0 = time.perf_counter()
        out = list(engine.generate(requests))
        total = time.perf_counter() - t0
        after = engine.stats()
        steps = (after.slot_steps - before.slot_steps) // after.slots
        if log is not None:
            log(f"beam run: {steps} decode steps in {total:.2f} s (new_tokens {new_tokens})")
        return {"encoder_ms": None, "first_step_ms": None, "steps_ms": [total * 1e3 / max(steps, 1)],
                "total_s": total, "decode_steps": steps, "ids": [row[1:] for row in out]}

    return run_once, engine.close
