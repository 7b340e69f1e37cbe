"""One engine, one setting, measured inside a worker process (see generate.py, which starts one per engine and batch).

Every engine gets the same source batch (random ids, every row `src_len` tokens ending in EOS), the same forced
target-language token, and generates exactly `new_tokens` tokens (the forced one included, as HF counts it): EOS is
either never the stopping token or suppressed until that length. A run returns the encoder latency, the duration of
each single-token decode step, and the end-to-end time; `summarize` turns repeats into the record's figures.

How each engine is timed (the record's `timing` field). In all three the per-token figures cover the same N - 2
single-token steps: the step that consumes the forced language token (a 2-token prefix call in nllb_neuronx) is
left out and reported as `first_step_ms`.
- nllb_neuronx (and nllb_neuronx-int8: the same with int8 weights, `quantization="s8"`), greedy: a manual loop over the model's own programs: `encode()` (waited for), then
  `next_tokens(tokens)` per step, each step timed until its token id is on the host. Its encoder_ms includes the
  cross-attention K/V projections of every decoder layer, which HF and CT2 compute in their first decoder step instead.
- nllb_neuronx, beams > 1: the slot engine with the device beam head (`engine_beams.py`; compiled for rows x beams
  slots), timed as CT2's beams: total / decode steps.
- hf: `model.get_encoder()` timed on its own for encoder_ms; `generate()` with a LogitsProcessor that timestamps
  every step (after the forward pass, before token choice); per-token = the gaps between consecutive stamps.
- ct2: `translate_batch(callback=...)` stamps each step's first token callback (greedy only); per-token = the gaps.
  CT2 has no encode-only call: encoder_ms = time to the first step callback minus one median step. With beams > 1
  there is no callback: per-token = total time / new_tokens (p50 = p90), no encoder_ms.
tokens_per_s = rows x new_tokens / end-to-end time (encoder included): nllb_neuronx's loop, generate(),
translate_batch().
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def source_batch(batch_size: int, src_len: int, vocab_size: int, eos: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, vocab_size - 1, (batch_size, src_len))
    ids[:, -1] = eos
    return ids.astype(np.int64)


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict], rows: int, new_tokens: int) -> dict:
    steps = [s for r in runs for s in r["steps_ms"]]
    totals = [r["total_s"] for r in runs]
    return {
        "encoder_ms": _median(r["encoder_ms"] for r in runs),
        "ms_per_token_p50": percentile(steps, 50) if steps else None,
        "ms_per_token_p90": percentile(steps, 90) if steps else None,
        "first_step_ms": _median(r["first_step_ms"] for r in runs),
        "tokens_per_s": statistics.median(rows * new_tokens / t for t in totals),
        "total_ms": statistics.median(totals) * 1e3,
        "decode_steps_timed": len(steps),
    }


class Bench:
    """Shared by the engines: the job settings and the progress lines (to stderr, shown by the parent)."""

    def __init__(self, job: dict, log):
        self.job, self.log = job, log
        self.rows, self.new_tokens = job["batch_size"], job["new_tokens"]

    def measure(self, run_once) -> dict:
        for i in range(self.job["warmup"]):
            run_once()
            self.log(f"warmup {i + 1}/{self.job['warmup']} done")
        runs = []
        for i in range(self.job["repeats"]):
            runs.append(run_once())
            r = runs[-1]
            p50 = statistics.median(r["steps_ms"]) if r["steps_ms"] else float("nan")
            enc = "n/a" if r["encoder_ms"] is None else f"{r['encoder_ms']:.1f} ms"
            self.log(f"repeat {i + 1}/{self.job['repeats']}: encoder {enc}, {p50:.2f} ms/token, "
                     f"total {r['total_s']:.2f} s")
        out = summarize(runs, self.rows, self.new_tokens)
        out["output_ids"] = runs[-1]["ids"][0].tolist()
        return out


def step_stamps():
    """A LogitsProcessor that timestamps every generate() step (after the forward pass, before token choice)."""
    from transformers import LogitsProcessor

    class StepStamps(LogitsProcessor):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    return StepStamps()


def run_generate(model, ids_np: np.ndarray, bench: Bench, beams: int, lang_id: int) -> dict:
    """One timed HF-style run: the encoder alone (for encoder_ms), then generate() with step stamps."""
    import torch
    from transformers import LogitsProcessorList

    ids, mask = torch.tensor(ids_np), torch.ones(ids_np.shape, dtype=torch.long)
    stamp = step_stamps()
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.get_encoder()(input_ids=ids, attention_mask=mask)
        t1 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=bench.new_tokens,
                             min_new_tokens=bench.new_tokens, num_beams=beams, do_sample=False,
                             forced_bos_token_id=lang_id, logits_processor=LogitsProcessorList([stamp]))
        t2 = time.perf_counter()
    gaps = np.diff(stamp.times) * 1e3
    return {"encoder_ms": (t1 - t0) * 1e3, "first_step_ms": float(gaps[0]) if len(gaps) else None,
            "steps_ms": gaps[1:].tolist(), "total_s": t2 - t1, "ids": out[:, 1:].numpy()}


GENERATE_TIMING = ("LogitsProcessor timestamps per step inside generate(); per-token = gaps between steps (the first "
                   "gap, after the forced token, excluded); encoder_ms from get_encoder() timed alone; tokens/s from "
                   "generate() wall time")


# ---------------------------------------------------------------------------------------------- nllb_neuronx
def run_nllb_neuronx(job: dict, log, quantization: str | None = None) -> dict:
    """Greedy: a manual loop over the model's programs. Beams: the slot engine's device beam head. `quantization`
    "s8": the `nllb_neuronx-int8` engine (int8 weights, `QuantizationConfig`: every linear and the LM head)."""
    import atexit
    import shutil
    import tempfile

    # Greedy runs without torch or transformers in the process, as users' greedy decoding does (their imports alone
    # are ~330 MB of RSS); so do beams (the slot engine).
    import hlo.runtime.xla as xla_runtime
    from nllb_neuronx import NLLBForSampling

    bench = Bench(job, log)
    cfg, beams = job["config"], job["beams"]
    ids = source_batch(bench.rows, job["src_len"], cfg["vocab_size"], cfg["eos_token_id"])
    mask = np.ones_like(ids)
    start_id, lang = cfg["decoder_start_token_id"], job["lang_id"]
    cache_dir = tempfile.mkdtemp(prefix="nllb_neuronx_bench_cache_")   # empty: the first compile is cold
    atexit.register(shutil.rmtree, cache_dir, True)

    store = {"compiled_dir": cache_dir}  # compiled artifacts: the second, "cached" compile loads from here
    t = time.perf_counter()
    model = NLLBForSampling.from_pretrained(job["checkpoint"], batch_size=bench.rows * beams, tp_degree=job["tp"],
                                            n_positions=[job["n_positions"]], encoder_buckets=[job["encoder_bucket"]],
                                            amp=job["amp"], backend=job["backend"], quantization=quantization,
                                            **store).to_neuron()
    load_s = time.perf_counter() - t
    log(f"loaded and uploaded weights in {load_s:.1f} s ({model.runtime.backend}, tp {job['tp']})")

    compile_time = [0.0]    # HLO build + serialize + XLA compile (or disk-cache load) of each program fetched
    fetched = [0]           # programs fetched (compiled or loaded)

    def add_compile_time(event):
        compile_time[0] += event.seconds
        fetched[0] += 1

    model.add_program_observer(add_compile_time)

    def greedy_once() -> dict:
        t0 = time.perf_counter()
        model.encode(ids, mask)
        model.wait()
        t1 = time.perf_counter()
        feed = np.tile(np.asarray([start_id, lang], np.int64), (bench.rows, 1))
        out, steps = [np.full(bench.rows, lang)], []
        for _ in range(bench.new_tokens - 1):
            ts = time.perf_counter()
            token = model.next_tokens(feed)
            steps.append((time.perf_counter() - ts) * 1e3)
            out.append(token)
            feed = token[:, None]
        total = time.perf_counter() - t0
        return {"encoder_ms": (t1 - t0) * 1e3, "first_step_ms": steps[0] if steps else 0.0, "steps_ms": steps[1:],
                "total_s": total, "ids": np.stack(out, 1)}

    if beams == 1:
        run_once = greedy_once
        timing = ("manual loop: encode() + block_until_ready (encoder_ms includes every decoder layer's "
                  "cross-attention K/V projection); per step next_tokens(tokens) until the token id is on the "
                  "host; p50/p90 over single-token steps (the 2-token prefix step excluded)")
    else:  # the slot engine's device beam head (engine_beams.py)
        from engine_beams import TIMING, beam_runner

        run_once, close_engine = beam_runner(model, ids, bench.new_tokens, beams, lang, log)
        atexit.register(close_engine)
        timing = TIMING

    compiles_before = model.runtime.compile_count
    run_once()
    compile_s, compiles = compile_time[0], model.runtime.compile_count - compiles_before
    log(f"cold compile: {compiles} programs in {compile_s:.1f} s")

    # the same programs again from the on-disk executable cache: forget them in this process, then load
    model.forget_programs()
    if hasattr(model.runtime, "clear_cache"):
        model.runtime.clear_cache()
    else:  # TODO: drop once runtime.clear_cache() (being added to hlo/runtime) has landed
        getattr(xla_runtime, "_EXECUTABLES", {}).clear()
    compile_time[0], fetched[0] = 0.0, 0
    before = model.runtime.compile_count
    run_once()
    compile_cached_s, programs_loaded = compile_time[0], fetched[0]
    cached_hit = model.runtime.compile_count == before
    log(f"cached compile: {compile_cached_s:.2f} s ({'disk cache hit' if cached_hit else 'recompiled'})")

    figures = bench.measure(run_once)
    matches_loop = None
    if beams == 1:
        reference = model.sample(ids, mask, max_new_tokens=bench.new_tokens, forced_bos_token_id=lang,
                                 eos_token_id=cfg["vocab_size"] + 1)
        matches_loop = bool((reference[0, 1:] == figures["output_ids"]).all())
    amp = job["amp"] if quantization is None else f"s8 weights (linears + LM head), {job['amp']} activations"
    return {**figures, "backend": model.runtime.backend, "amp": amp, "load_s": load_s,
            "compile_s": compile_s, "compile_cached_s": compile_cached_s, "programs_compiled": compiles,
            "programs_loaded": programs_loaded,
            "compile_cache_hit": cached_hit, "sample_matches_loop": matches_loop,
            "threads": f"xla-cpu: {job['threads']} cores" if model.runtime.backend == "xla-cpu" else None,
            "timing": timing}


# ------------------------------------------------------------------------------------------------------- HF
def run_hf(job: dict, log) -> dict:
    import torch
    from transformers import M2M100ForConditionalGeneration

    torch.set_num_threads(job["threads"])
    bench = Bench(job, log)
    cfg = job["config"]
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[job["amp"]]
    t = time.perf_counter()
    model = M2M100ForConditionalGeneration.from_pretrained(job["checkpoint"], dtype=dtype).eval()
    load_s = time.perf_counter() - t
    log(f"loaded in {load_s:.1f} s ({model.config._attn_implementation} attention, {job['threads']} threads)")
    ids_np = source_batch(bench.rows, job["src_len"], cfg["vocab_size"], cfg["eos_token_id"])
    figures = bench.measure(lambda: run_generate(model, ids_np, bench, job["beams"], job["lang_id"]))
    return {**figures, "backend": "torch-cpu", "amp": job["amp"], "load_s": load_s, "compile_s": None,
            "compile_cached_s": None, "threads": f"torch: {job['threads']}", "timing": GENERATE_TIMING}


# ------------------------------------------------------------------------------------------------- CTranslate2
def run_ct2(job: dict, log, compute_type: str) -> dict:
    import ctranslate2

    from shapes import ct2_vocabulary

    bench = Bench(job, log)
    cfg = job["config"]
    t = time.perf_counter()
    translator = ctranslate2.Translator(job["ct2_dir"], device="cpu", compute_type=compute_type,
                                        intra_threads=job["threads"], inter_threads=1)
    load_s = time.perf_counter() - t
    log(f"loaded in {load_s:.1f} s ({compute_type}, {job['threads']} intra threads)")
    vocab = ct2_vocabulary(job["ct2_dir"])
    index = {tok: i for i, tok in enumerate(vocab)}
    ids = source_batch(bench.rows, job["src_len"], cfg["vocab_size"], cfg["eos_token_id"])
    source = [[vocab[i] for i in row] for row in ids]
    prefix = [[vocab[job["lang_id"]]] for _ in range(bench.rows)]
    beams = job["beams"]

    def run_once() -> dict:
        stamps: dict[int, float] = {}

        def callback(step):
            stamps.setdefault(step.step, time.perf_counter())
            return False

        t0 = time.perf_counter()
        results = translator.translate_batch(source, prefix, beam_size=beams, max_decoding_length=bench.new_tokens,
                                             min_decoding_length=bench.new_tokens, max_input_length=0,
                                             callback=callback if beams == 1 else None)
        total = time.perf_counter() - t0
        out = np.array([[index[tok] for tok in r.hypotheses[0]] for r in results])
        if beams == 1:
            times = [stamps[k] for k in sorted(stamps)]
            gaps = np.diff(times) * 1e3
            steps = gaps[1:].tolist()
            median_step = float(np.median(steps)) if steps else 0.0
            first = (times[0] - t0) * 1e3
            encoder_ms = max(first - median_step, 0.0)
            return {"encoder_ms": encoder_ms, "first_step_ms": float(gaps[0]) if len(gaps) else 0.0,
                    "steps_ms": steps, "total_s": total, "ids": out}
        return {"encoder_ms": None, "first_step_ms": None,
                "steps_ms": [total * 1e3 / bench.new_tokens], "total_s": total, "ids": out}

    figures = bench.measure(run_once)
    timing = ("translate_batch callback: time of each step's first callback; per-token = gaps between steps "
              "(the first gap, after the forced prefix token, excluded); encoder_ms = time to the first callback "
              "minus one median step (CT2 has no encode-only call)") if beams == 1 else \
        "total translate_batch time / new_tokens (no per-step callback with beams); p50 = p90"
    return {**figures, "backend": "ct2-cpu", "amp": compute_type, "load_s": load_s, "compile_s": None,
            "compile_cached_s": None, "threads": f"ct2 intra_threads: {job['threads']}", "timing": timing}


ENGINES = ("nllb_neuronx", "nllb_neuronx-int8", "hf", "ct2-float32", "ct2-int8")


def run_engine(engine: str, job: dict, log) -> dict:
    if engine == "nllb_neuronx":
        return run_nllb_neuronx(job, log)
    if engine == "nllb_neuronx-int8":
        return run_nllb_neuronx(job, log, quantization="s8")
    if engine == "hf":
        return run_hf(job, log)
    if engine.startswith("ct2-"):
        return run_ct2(job, log, engine[len("ct2-"):])
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
