"""One engine translating the whole corpus, text in and text out, inside a worker process (see corpus.py).

Every engine gets the same lines, batch size, thread count, forced target language and `max_new_tokens` (high
enough that the trained model stops on EOS by itself), and returns per line the generated ids (after the forced
language token, EOS left out), whether it stopped on EOS, the text, and its latency (seconds from the start of the
timed run until that line's translation was in hand). Before the timed run each engine translates the warm-up lines
once; both nllb_neuronx engines first compile every greedy program of their shape and run each once on zeros with
`compile_all(heads=("greedy",), warm=True)` (the slot engine's programs included; kept on disk under the cache root
and shared by the workers of one batch size), so no compile and no program's first call (on XLA CPU about 0.4 s
more than later ones) falls in the timed run: the warm-up lines alone meet only some of the slot engine's programs.
"""

from __future__ import annotations

import time

import numpy as np


class CorpusRun:
    """The job, the tokenizer, and the per-line results of one engine."""

    def __init__(self, job: dict, log):
        from transformers import AutoTokenizer

        self.job, self.log = job, log
        self.texts = [s for s, _ in job["lines"]]
        self.batch_size, self.max_new = job["batch_size"], job["max_new_tokens"]
        self.tokenizer = AutoTokenizer.from_pretrained(job["checkpoint"], src_lang=job["src_lang"])
        self.lang_id = self.tokenizer.convert_tokens_to_ids(job["tgt_lang"])
        self.eos, self.pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id

    def encode(self, texts) -> list[list[int]]:
        return [self.tokenizer(t)["input_ids"] for t in texts]

    def sorted_batches(self, indices) -> list[tuple[list[int], list[list[int]]]]:
        """(line indices, their token ids) sorted by source length (longest first), in chunks of batch_size."""
        encoded = dict(zip(indices, self.encode(self.texts[i] for i in indices)))
        order = sorted(indices, key=lambda i: -len(encoded[i]))
        return [(chunk, [encoded[i] for i in chunk])
                for chunk in (order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size))]

    def line(self, generated) -> dict:
        """Generated ids after the forced language token -> the line's record."""
        ids = [int(t) for t in generated]
        stopped = self.eos in ids
        ids = ids[: ids.index(self.eos)] if stopped else [t for t in ids if t != self.pad]
        return {"ids": ids, "stopped": stopped, "text": self.tokenizer.decode(ids, skip_special_tokens=True)}

    def padded(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad, np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        return ids, (ids != self.pad).astype(np.int64)

    def timed(self, translate, indices=None) -> dict:
        """Warm-up lines once, then every line (or `indices`) timed: translate(indices, start) -> {index: line}."""
        t = time.perf_counter()
        translate(self.job["warmup_indices"], time.perf_counter())
        warmup_s = time.perf_counter() - t
        self.log(f"warm-up ({len(self.job['warmup_indices'])} lines) in {warmup_s:.1f} s")
        indices = list(range(len(self.texts))) if indices is None else indices
        start = time.perf_counter()
        out = translate(indices, start)
        wall = time.perf_counter() - start
        lines = [out[i] for i in indices]
        tokens = sum(len(r["ids"]) + r["stopped"] for r in lines)
        latency = [r["latency_s"] for r in lines]
        self.log(f"{len(lines)} lines in {wall:.1f} s")
        return {"indices": indices, "outputs": lines, "wall_s": wall, "warmup_s": warmup_s,
                "lines": len(lines), "lines_per_s": len(lines) / wall, "tokens_per_s": tokens / wall,
                "generated_tokens": tokens, "stopped_on_eos": sum(r["stopped"] for r in lines),
                "latency_p50_s": float(np.percentile(latency, 50)), "latency_p90_s": float(np.percentile(latency, 90))}


def load_nllb_neuronx(run: CorpusRun, quantization: str | None = None):
    from nllb_neuronx import NLLBForSampling

    job = run.job
    t = time.perf_counter()
    model = NLLBForSampling.from_pretrained(job["checkpoint"], batch_size=run.batch_size, tp_degree=job["tp"],
                                            n_positions=job["n_positions"], encoder_buckets=job["encoder_buckets"],
                                            backend=job["backend"], compiled_dir=job.get("compiled_dir"),
                                            quantization=quantization).to_neuron()
    return model, time.perf_counter() - t


def run_slot_engine(job: dict, log, quantization: str | None = None) -> dict:
    """nllb_neuronx's continuous-batching engine: every request queued at once, results in input order.
    `quantization` "s8": the nllb_neuronx-int8 engine (int8 weights: every linear and the LM head)."""
    try:
        from nllb_neuronx.engine import GenerationRequest, SlotEngine
    except ImportError as e:
        raise RuntimeError(f"engine not available: nllb_neuronx.engine.SlotEngine cannot be imported ({e})") from e

    run = CorpusRun(job, log)
    model, load_s = load_nllb_neuronx(run, quantization)
    t = time.perf_counter()
    compiled = model.compile_all(heads=("greedy",), long_rows=job.get("long_slots"), warm=True)  # the slot engine's too
    compile_s = time.perf_counter() - t
    log(f"compile_all: {compiled} programs compiled, every one run once, in {compile_s:.1f} s")
    engine = SlotEngine(model, admit_batch=min(job.get("admit_batch") or 1, run.batch_size),
                        admission=job.get("admission") or "fifo", encode_ahead=bool(job.get("encode_ahead")),
                        long_slots=job.get("long_slots"))

    before = {}

    def translate(indices, start):
        before["stats"] = engine.stats()                 # the engine's counters are cumulative: keep this run's
        requests = [GenerationRequest(input_ids=ids, forced_bos_token_id=run.lang_id, max_new_tokens=run.max_new)
                    for ids in run.encode(run.texts[i] for i in indices)]
        out = {}
        for i, generated in zip(indices, engine.generate(requests)):      # decoder start, language token, ...
            out[i] = {**run.line(np.asarray(generated).ravel()[2:]), "latency_s": time.perf_counter() - start}
        return out

    compiles = model.runtime.compile_count
    result = run.timed(translate)
    if model.runtime.compile_count > compiles:
        log(f"warning: {model.runtime.compile_count - compiles} programs compiled during the timed run "
            "(raise --warmup-batches)")
    first, last = before["stats"], engine.stats()
    engine.close()
    if quantization is not None and job.get("f32_reference"):
        result.update(teacher_forced_agreement(model, run, job["f32_reference"]))
    occupancy = (last.useful_slot_steps - first.useful_slot_steps) / max(1, last.slot_steps - first.slot_steps)
    spent = {k: getattr(last, k) - getattr(first, k) for k in ("encoder_calls", "encoder_seconds", "steps",
                                                                "step_seconds", "resizes", "moves")}
    amp = "f32" if quantization is None else "s8 weights (linears + LM head), f32 activations"
    return {**result, "load_s": load_s, "compile_s": compile_s, "backend": model.runtime.backend, "amp": amp,
            "slot_occupancy": occupancy, "programs_compiled": model.runtime.compile_count - compiles,
            "admit_batch": engine.admit_batch, "admission": engine.admission, "encode_ahead": engine.encode_ahead,
            "long_slots": engine.long_slots, **spent,
            "timing": "SlotEngine.generate over every line at once; latency = when the line came out of the "
                      "iterator (input order); occupancy = useful slot-steps / all slot-steps of the timed run "
                      "(engine.stats())"}


def teacher_forced_agreement(model, run: CorpusRun, reference: dict) -> dict:
    """The int8 engine's greedy decisions against the f32 engine's output `reference` ({"indices", "outputs"} of
    its record) read as the prefix (`nllb_neuronx.agreement`), untimed, after the timed run."""
    from nllb_neuronx.agreement import decision_agreement

    t = time.perf_counter()
    indices, outputs = reference["indices"], reference["outputs"]
    sources = run.encode(run.texts[i] for i in indices)
    references = [[run.lang_id, *o["ids"], *([run.eos] if o["stopped"] else [])] for o in outputs]
    agreed, total = decision_agreement(model, sources, references, model.config.decoder_start_token_id)
    run.log(f"teacher-forced agreement with f32: {agreed} of {total} decisions in {time.perf_counter() - t:.1f} s")
    return {"decision_agreement_f32": agreed / max(1, total), "decisions_compared_f32": total}


def run_lockstep(job: dict, log) -> dict:
    """Today's NLLBForSampling.sample() on length-sorted batches: a batch decodes until its longest row ends."""
    run = CorpusRun(job, log)
    model, load_s = load_nllb_neuronx(run)
    t = time.perf_counter()
    compiled = model.compile_all(heads=("greedy",), warm=True)
    compile_s = time.perf_counter() - t
    log(f"compile_all: {compiled} programs compiled, every one run once, in {compile_s:.1f} s")
    steps = {"useful": 0, "all": 0}

    def translate(indices, start):
        out = {}
        steps["useful"] = steps["all"] = 0
        for batch, rows in run.sorted_batches(indices):
            ids, mask = run.padded(rows)
            generated = model.sample(ids, mask, max_new_tokens=run.max_new, forced_bos_token_id=run.lang_id)
            now = time.perf_counter() - start
            rows = [run.line(row[2:]) for row in generated]       # decoder start and forced language token
            lengths = [len(r["ids"]) + r["stopped"] for r in rows]
            steps["useful"] += sum(lengths)
            steps["all"] += run.batch_size * max(lengths)
            out.update({i: {**r, "latency_s": now} for i, r in zip(batch, rows)})
        return out

    compiles = model.runtime.compile_count
    result = run.timed(translate)
    t = time.perf_counter()               # untimed: what the timed run's encoder calls cost, each waited for
    for _, rows in run.sorted_batches(result["indices"]):
        model.encode(*run.padded(rows))
        model.wait()
    encoder_s = time.perf_counter() - t
    log(f"encoder alone, every batch again: {encoder_s:.1f} s")
    return {**result, "load_s": load_s, "compile_s": compile_s, "backend": model.runtime.backend, "amp": "f32",
            "slot_occupancy": steps["useful"] / steps["all"], "encoder_seconds": encoder_s,
            "programs_compiled": model.runtime.compile_count - compiles,
            "timing": "sample() per length-sorted batch; latency = when the line's batch finished; occupancy = "
                      "useful row-steps (each row's tokens up to its EOS) / batch_size x the batch's longest row, "
                      "measured from the outputs; encoder_seconds: every batch's encode() again after the timed "
                      "run, each waited for"}


def run_hf(job: dict, log) -> dict:
    import torch
    from transformers import M2M100ForConditionalGeneration

    torch.set_num_threads(job["threads"])
    run = CorpusRun(job, log)
    t = time.perf_counter()
    model = M2M100ForConditionalGeneration.from_pretrained(job["checkpoint"]).eval()
    load_s = time.perf_counter() - t

    def translate(indices, start):
        out = {}
        for batch, rows in run.sorted_batches(indices):
            ids, mask = run.padded(rows)
            with torch.inference_mode():
                generated = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                           max_new_tokens=run.max_new, num_beams=1, do_sample=False,
                                           forced_bos_token_id=run.lang_id).numpy()
            now = time.perf_counter() - start
            out.update({i: {**run.line(row[2:]), "latency_s": now} for i, row in zip(batch, generated)})
        return out

    subset = job.get("hf_lines")
    indices = None if not subset or subset >= len(run.texts) else \
        sorted(np.linspace(0, len(run.texts) - 1, subset).round().astype(int).tolist())
    result = run.timed(translate, indices)
    note = None if indices is None else f"a subset: {len(indices)} of {len(run.texts)} lines, evenly spaced"
    return {**result, "load_s": load_s, "backend": "torch-cpu", "amp": "f32", "note": note,
            "threads": f"torch: {job['threads']}",
            "timing": "generate() per length-sorted batch; latency = when the line's batch finished"}


def run_ct2(job: dict, log, compute_type: str) -> dict:
    import ctranslate2

    from shapes import ct2_vocabulary

    run = CorpusRun(job, log)
    t = time.perf_counter()
    translator = ctranslate2.Translator(job["ct2_dir"], device="cpu", compute_type=compute_type,
                                        intra_threads=job["threads"], inter_threads=1)
    load_s = time.perf_counter() - t
    vocab = ct2_vocabulary(job["ct2_dir"])
    index = {tok: i for i, tok in enumerate(vocab)}
    lang = vocab[run.lang_id]

    def translate(indices, start):
        source = [[vocab[t] for t in ids] for ids in run.encode(run.texts[i] for i in indices)]
        results = translator.translate_iterable(source, target_prefix=[[lang]] * len(source),
                                                max_batch_size=run.batch_size, batch_type="examples",
                                                beam_size=1, max_decoding_length=run.max_new,
                                                max_input_length=0, return_end_token=True)
        return {i: {**run.line([index[t] for t in r.hypotheses[0][1:]]), "latency_s": time.perf_counter() - start}
                for i, r in zip(indices, results)}

    result = run.timed(translate)
    return {**result, "load_s": load_s, "backend": "ct2-cpu", "amp": compute_type,
            "threads": f"ct2 intra_threads: {job['threads']}",
            "timing": "translate_iterable(max_batch_size, batch_type='examples'): CT2 sorts by length itself; "
                      "latency = when the line came out of the iterator (input order)"}


ENGINES = ("nllb_neuronx", "nllb_neuronx-int8", "nllb_neuronx-lockstep", "ct2-float32", "ct2-int8", "hf")


def run_engine(engine: str, job: dict, log) -> dict:
    if engine == "nllb_neuronx":
        return run_slot_engine(job, log)
    if engine == "nllb_neuronx-int8":
        return run_slot_engine(job, log, quantization="s8")
    if engine == "nllb_neuronx-lockstep":
        return run_lockstep(job, log)
    if engine == "hf":
        return run_hf(job, log)
    if engine.startswith("ct2-"):
        return run_ct2(job, log, engine[len("ct2-"):])
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
