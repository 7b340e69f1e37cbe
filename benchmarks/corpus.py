"""Corpus benchmark: translate a corpus of lines of very different lengths, text in and text out, with every engine
stopping on EOS by itself; lines/s, tokens/s, slot occupancy, line latency, and agreement with HF.

    python benchmarks/corpus.py --shape nllb-200-distilled-600M --batch-sizes 8,16 \\
        --json benchmarks/out/corpus-600m.json --plot benchmarks/out/corpus-600m.png

The model: nllb_neuronx.toy_task trained at the shape's d_model and heads (narrow FFN, one layer each side), then
embedded exactly into the shape's layers, FFN and vocabulary (shapes.make_toy_checkpoint; made once and cached next
to the random benchmark weights), so it stops where the trained model stops and a decode step reads every weight of
the real shape. The corpus (`--lines`) has source lengths from 3 to `--max-tokens` tokens, log-normal around
`--median-tokens`, target/source length ratios varying line to line. Engines: nllb_neuronx (the continuous-batching
SlotEngine), nllb_neuronx-int8 (the same with int8 weights; its records hold its greedy agreement with nllb_neuronx's
f32 output: token_agreement_f32 position by position, identical_to_f32 / compared_to_f32 lines, and, when
nllb_neuronx ran first, decision_agreement_f32 over decisions_compared_f32: int8's greedy choice after each prefix of
f32's output, `nllb_neuronx.agreement`), nllb_neuronx-lockstep (sample() on length-sorted batches), ct2-float32 /
ct2-int8 (translate_iterable, CT2's own length sorting), hf (generate() on length-sorted batches; `--hf-lines` for
a subset). Same batch size, threads and max_new_tokens for all; each engine and batch size in its own worker process
(as generate.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import corpus_engines  # noqa: E402
import generate  # noqa: E402  (its engine_available and LOG_MARK)
import machine  # noqa: E402
import shapes  # noqa: E402

ENGINES = corpus_engines.ENGINES
SRC_LANG, TGT_LANG = "eng_Latn", "fra_Latn"
RECORD = ("engine", "lines", "batch_size", "lines_per_s", "tokens_per_s", "slot_occupancy", "latency_p50_s",
          "latency_p90_s", "identical_to_hf", "compared_to_hf", "stopped_on_eos")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(shapes.TOY_TRAINING), default="nllb-200-distilled-600M",
                   help="the trained toy model embedded into this shape (made once, cached)")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, from: " + ", ".join(ENGINES))
    p.add_argument("--batch-sizes", default="8,16")
    p.add_argument("--lines", type=int, default=300)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="longest source line in tokens (default: the longest the shape's model was trained on)")
    p.add_argument("--median-tokens", type=int, default=25)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation limit for every engine (default 3 x --max-tokens + 8: the model stops first)")
    p.add_argument("--warmup-batches", type=int, default=4,
                   help="each engine first translates this many batches' worth of lines, spread over the lengths, "
                        "untimed (compiles happen there; a record's programs_compiled counts any left for the run)")
    p.add_argument("--hf-lines", type=int, default=0, help="hf translates only this many lines (0: all)")
    p.add_argument("--hf-batch-sizes", default=None,
                   help="batch sizes hf runs at (default: the smallest of --batch-sizes); the other batch sizes "
                        "compare to the hf run of the nearest batch size (hf is the reference, and slow)")
    p.add_argument("--tp", type=int, default=1, help="nllb_neuronx tensor-parallel degree")
    p.add_argument("--admit-batch", type=int, default=1,
                   help="the SlotEngine admits once this many slots are free (SlotEngine(admit_batch=...))")
    p.add_argument("--admission", default="longest_first", choices=("fifo", "longest_first"),
                   help="which queued line the SlotEngine admits next (SlotEngine(admission=...)); lockstep, CT2 and "
                        "HF sort by length too")
    p.add_argument("--encode-ahead", default="on", choices=("on", "off"),
                   help="the SlotEngine encodes queued lines ahead in sub-batches (SlotEngine(encode_ahead=...))")
    p.add_argument("--long-slots", type=int, default=None,
                   help="slots whose caches the SlotEngine keeps in the long segment (SlotEngine(long_slots=...); "
                        "default: its own, a quarter of them on XLA CPU)")
    p.add_argument("--backend", default=None, help="nllb_neuronx backend (default: its own choice)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads (cores) for every engine")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--plot", metavar="FILE")
    p.add_argument("--cache-root", default=str(shapes.DEFAULT_CACHE_ROOT),
                   help="where benchmark checkpoints and CT2 conversions are kept")
    p.add_argument("--worker-timeout", type=float, default=None, help="seconds before a worker is abandoned")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    args.hf_batch_sizes = (sorted(int(b) for b in args.hf_batch_sizes.split(",")) if args.hf_batch_sizes
                           else None)
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown:
        p.error(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    trained_max = shapes.toy_train_config(args.shape).max_tokens
    args.max_tokens = args.max_tokens or trained_max
    args.median_tokens = min(args.median_tokens, args.max_tokens)
    args.max_new_tokens = args.max_new_tokens or 3 * args.max_tokens + 8
    if args.max_tokens > trained_max:
        p.error(f"--max-tokens {args.max_tokens}: the {args.shape} model was trained on lines up to {trained_max}")
    if min(args.batch_sizes) < 1 or min(args.lines, args.threads, args.warmup_batches) < 1 or args.max_tokens < 3:
        p.error("--batch-sizes, --lines, --threads and --warmup-batches must be positive, --max-tokens at least 3")
    return args


def buckets(largest: int, first: int = 32) -> list[int]:
    """Powers of two from `first` up to the first that holds `largest`."""
    out = [first]
    while out[-1] < largest:
        out.append(out[-1] * 2)
    return out


# ------------------------------------------------------------------------------------------------------ worker
def prepare(job: dict) -> dict:
    """The benchmark checkpoint and its CT2 conversions (each only where not cached), and the corpus."""
    from nllb_neuronx import toy_task

    made = shapes.make_toy_checkpoint(job["shape"], Path(job["cache_root"]),
                                      log=lambda m: print(generate.LOG_MARK + m, file=sys.stderr, flush=True))
    converted = shapes.convert_ct2_all(Path(made["path"]), job["quantizations"], Path(job["cache_root"]))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(made["path"])
    lines = toy_task.corpus(shapes.toy_train_config(job["shape"]).task, tokenizer, job["lines"],
                            max_tokens=job["max_tokens"], median_tokens=job["median_tokens"], seed=job["seed"])
    lengths = [len(tokenizer(s)["input_ids"]) for s, _ in lines]
    return {"checkpoint": made, "converted": converted, "lines": lines, "source_tokens": lengths}


def worker_main(args) -> int:
    job = json.loads(Path(args.worker_job).read_text())
    threads = job.get("threads")
    if threads and threads < len(os.sched_getaffinity(0)):      # every engine on the same cores, XLA included
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])

    def log(msg):
        print(generate.LOG_MARK + msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    result = prepare(job) if args.worker == "prepare" else corpus_engines.run_engine(args.worker, job, log)
    result["worker_s"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(job["out"]).write_text(json.dumps(result))
    return 0


def run_worker(task: str, job: dict, args, tmp: Path) -> dict:
    """This script again as `--worker task`; its progress lines shown, its JSON returned (or a failure record)."""
    out, job_file = tmp / f"{task}-{job.get('batch_size', 0)}.json", tmp / "job.json"
    job_file.write_text(json.dumps({**job, "out": str(out)}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(args.threads), "TF_CPP_MIN_LOG_LEVEL": "2",
           "TOKENIZERS_PARALLELISM": "false"}
    label, start, tail = f"{task} b={job.get('batch_size', '-')}", time.perf_counter(), []
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", task, "--worker-job",
                             str(job_file)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            errors="replace")
    try:
        for line in proc.stderr:
            line = line.rstrip("\n").split("\r")[-1]
            tail = (tail + [line])[-30:]
            if line.startswith(generate.LOG_MARK):
                print(f"  [{label} {time.perf_counter() - start:6.1f}s] {line.removeprefix(generate.LOG_MARK)}",
                      file=sys.stderr, flush=True)
        rc = proc.wait(timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = f"killed after --worker-timeout {args.worker_timeout:g} s"
    if rc != 0 or not out.exists():
        error = next((t for t in reversed(tail) if t.strip() and not t.startswith(generate.LOG_MARK)), "no output")
        print(f"  [{label}] FAILED ({rc}):\n    " + "\n    ".join(tail), file=sys.stderr)
        return {"status": "failed", "note": f"worker exit {rc}: {error[-300:]}"}
    return {"status": "ok", **json.loads(out.read_text())}


# ---------------------------------------------------------------------------------------------------- parent
def compare_to_hf(records: list[dict]) -> None:
    """identical_to_hf: lines whose generated ids equal the hf engine's at the same batch size, or else at the
    nearest batch size hf ran at (`hf_batch_size`), over the lines hf translated; differs_from_hf: the first few line
    indices that do not."""
    refs = [h for h in records if h["engine"] == "hf" and h.get("status") == "ok"]
    for r in records:
        if r["engine"] == "hf" or not refs or r.get("status") != "ok":
            continue
        ref = min(refs, key=lambda h: (abs(h["batch_size"] - r["batch_size"]), h["batch_size"]))
        r["hf_batch_size"] = ref["batch_size"]
        ours = dict(zip(r["indices"], r["outputs"]))
        shared = [(i, o) for i, o in zip(ref["indices"], ref["outputs"]) if i in ours]
        differs = [i for i, o in shared if ours[i]["ids"] != o["ids"]]
        r.update(identical_to_hf=len(shared) - len(differs), compared_to_hf=len(shared), differs_from_hf=differs[:20])


def target_lines(records: list[dict]) -> list[str]:
    """Issue 14's targets per batch size: the SlotEngine against lockstep, against the bound lockstep's measured
    occupancy sets (lockstep lines/s / its occupancy: lockstep with no idle row), and against CT2 float32. Beside
    the bound, the same bound with only lockstep's decode steps scaled by its occupancy (its encoder time, measured
    again after its run, is per line, not per row-step: an engine with no idle row still encodes every line)."""
    out = []
    ok = {(r["engine"], r["batch_size"]): r for r in records if r.get("status") == "ok"}
    for batch in sorted({b for _, b in ok}):
        engine, lockstep, ct2 = (ok.get((e, batch)) for e in ("nllb_neuronx", "nllb_neuronx-lockstep", "ct2-float32"))
        if engine is None:
            continue
        parts = []
        if lockstep is not None:
            bound = lockstep["lines_per_s"] / lockstep["slot_occupancy"]
            parts += [f"{engine['lines_per_s'] / lockstep['lines_per_s']:.2f}x lockstep (target >= 1.15)",
                      f"{engine['lines_per_s'] / bound:.2f} of lockstep's occupancy bound {bound:.2f} lines/s "
                      f"(target >= 0.95)"]
            if lockstep.get("encoder_seconds"):     # the bound with only the decode steps scaled by occupancy
                encoder = lockstep["encoder_seconds"]
                steps_bound = lockstep["lines"] / ((lockstep["wall_s"] - encoder) * lockstep["slot_occupancy"]
                                                   + encoder)
                parts.append(f"{engine['lines_per_s'] / steps_bound:.2f} of it with lockstep's encoder time "
                             f"({encoder:.1f} s) counted whole: {steps_bound:.2f} lines/s")
        if ct2 is not None:
            parts.append(f"{engine['lines_per_s'] / ct2['lines_per_s']:.2f}x ct2-float32 (target >= 1.5)")
        same = [f"{r['engine']} {r['identical_to_hf']}/{r['compared_to_hf']}" for r in (engine, lockstep)
                if r is not None and r.get("compared_to_hf") is not None]
        if same:
            parts.append("identical to HF: " + ", ".join(same))
        out.append(f"batch {batch}: " + "; ".join(parts))
    return out


def compare_to_f32(records: list[dict], reference: str = "nllb_neuronx") -> None:
    """For the int8 engine (nllb_neuronx-int8), against the f32 SlotEngine (`reference`) at the same batch size:
    token_agreement_f32, the share of the f32 engine's generated ids (up to its EOS) that the int8 engine generated
    at the same position of the same line, and identical_to_f32 lines (ids and stopping) over compared_to_f32."""
    for r in records:
        ref = next((f for f in records if f["engine"] == reference and f["batch_size"] == r["batch_size"]
                    and f.get("status") == "ok"), None)
        if r["engine"] != "nllb_neuronx-int8" or ref is None or r.get("status") != "ok":
            continue
        ours = dict(zip(r["indices"], r["outputs"]))
        shared = [(ours[i], o) for i, o in zip(ref["indices"], ref["outputs"]) if i in ours]
        same = sum(sum(a == b for a, b in zip(mine["ids"], theirs["ids"])) for mine, theirs in shared)
        total = sum(len(theirs["ids"]) for _, theirs in shared)
        r.update(token_agreement_f32=same / max(1, total),
                 identical_to_f32=sum(m["ids"] == t["ids"] and m["stopped"] == t["stopped"] for m, t in shared),
                 compared_to_f32=len(shared))


def f32_reference(records: list[dict], batch: int) -> dict | None:
    """The f32 SlotEngine's lines at `batch` ({"indices", "outputs"}), if it ran before: the int8 engine's worker
    measures its teacher-forced agreement against them."""
    ref = next((r for r in records if r["engine"] == "nllb_neuronx" and r["batch_size"] == batch
                and r.get("status") == "ok"), None)
    return None if ref is None else {"indices": ref["indices"], "outputs": ref["outputs"]}


def _num(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _f32_agreement(r: dict) -> str:
    if r.get("compared_to_f32") is None:
        return "–"
    forced = "" if r.get("decision_agreement_f32") is None else f", {r['decision_agreement_f32']:.4f} forced"
    return f"{r['token_agreement_f32']:.4f}, {r['identical_to_f32']} / {r['compared_to_f32']}{forced}"


def markdown_table(records: list[dict], meta: dict) -> str:
    lines = [f"Shape `{meta['shape']}` (trained toy model, embedded), {meta['lines']} lines, source "
             f"{meta['source_tokens_min']}–{meta['source_tokens_max']} tokens "
             f"(median {meta['source_tokens_median']}), "
             f"max_new_tokens {meta['max_new_tokens']}, {meta['threads']} threads; machine: {meta['machine']['cpu']}, "
             f"{meta['machine']['cores']} cores.", "",
             "| engine | batch | lines | lines/s | tokens/s | slot occupancy | latency p50 s | latency p90 s | "
             "identical to HF | stopped on EOS | compile s | peak RSS MB | int8 vs f32: tokens, lines, decisions |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        if r.get("status") != "ok":
            lines.append(f"| {r['engine']} | {r['batch_size']} | {r.get('status')}: {r.get('note', '')} |"
                         + " – |" * 10)
            continue
        same = "–" if r.get("compared_to_hf") is None else f"{r['identical_to_hf']} / {r['compared_to_hf']}"
        lines.append(f"| {r['engine']} | {r['batch_size']} | {r['lines']} | {_num(r['lines_per_s'], 2)} | "
                     f"{_num(r['tokens_per_s'])} | {_num(r.get('slot_occupancy'), 3)} | {_num(r['latency_p50_s'])} | "
                     f"{_num(r['latency_p90_s'])} | {same} | {r['stopped_on_eos']} / {r['lines']} | "
                     f"{_num(r.get('compile_s'))} | {_num(r.get('peak_rss_mb'), 0)} | {_f32_agreement(r)} |")
    return "\n".join(lines)


def plot(records: list[dict], meta: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for engine in dict.fromkeys(r["engine"] for r in records):
        points = sorted((r["batch_size"], r["lines_per_s"]) for r in records
                        if r["engine"] == engine and r.get("status") == "ok")
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=engine)
    sizes = sorted({r["batch_size"] for r in records})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("lines / s")
    ax.set_title(f"{meta['shape']}: {meta['lines']} lines, {meta['machine']['cores']} cores")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    started = time.perf_counter()
    cache_root = Path(args.cache_root).expanduser()
    skips = {e: generate.engine_available(e) for e in args.engines}
    quantizations = sorted({e[len("ct2-"):] for e in args.engines if e.startswith("ct2-") and not skips[e]})
    with tempfile.TemporaryDirectory(prefix="nllb_corpus_") as tmp:
        done = run_worker("prepare", {"shape": args.shape, "cache_root": str(cache_root), "lines": args.lines,
                                      "quantizations": quantizations, "max_tokens": args.max_tokens,
                                      "median_tokens": args.median_tokens, "seed": args.seed}, args, Path(tmp))
        if done["status"] != "ok":
            raise SystemExit(f"could not prepare the checkpoint, its CT2 conversions or the corpus: {done['note']}")
        for q, made in done["converted"].items():
            if "error" in made:
                skips[f"ct2-{q}"] = f"CT2 conversion failed: {made['error']}"
        checkpoint, lengths = done["checkpoint"]["path"], done["source_tokens"]
        config = shapes.read_config(checkpoint)
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        base = {"checkpoint": checkpoint, "lines": done["lines"], "src_lang": SRC_LANG, "tgt_lang": TGT_LANG,
                "max_new_tokens": args.max_new_tokens, "threads": args.threads, "tp": args.tp,
                "backend": args.backend, "hf_lines": args.hf_lines, "admit_batch": args.admit_batch,
                "admission": args.admission, "encode_ahead": args.encode_ahead == "on", "long_slots": args.long_slots,
                "encoder_buckets": buckets(max(lengths)),
                "n_positions": buckets(args.max_new_tokens + 2, 64)}
        records = []
        for batch in args.batch_sizes:
            n = min(len(order), args.warmup_batches * batch)    # spread over the lengths: every bucket is met
            warmup = sorted({order[round(k * (len(order) - 1) / max(1, n - 1))] for k in range(n)})
            hf_sizes = args.hf_batch_sizes or [min(args.batch_sizes)]
            for engine in args.engines:
                record = {"engine": engine, "batch_size": batch, "shape": args.shape}
                if engine == "hf" and batch not in hf_sizes:
                    continue
                if skips.get(engine):
                    record.update(status="skipped", note=skips[engine])
                else:
                    job = {**base, "batch_size": batch, "warmup_indices": warmup,   # programs shared on disk
                           "compiled_dir": str(cache_root / "compiled" / (f"corpus-{args.shape}-b{batch}-tp{args.tp}"
                                                                          + ("-s8" if engine.endswith("-int8") else ""))),
                           "ct2_dir": str(shapes.ct2_dir(Path(checkpoint), engine[len("ct2-"):], cache_root))
                           if engine.startswith("ct2-") else None}
                    if engine == "nllb_neuronx-int8":        # the f32 engine's output, if it ran: for agreement
                        job["f32_reference"] = f32_reference(records, batch)
                    record.update(run_worker(engine, job, args, Path(tmp)))
                for key in RECORD:
                    record.setdefault(key, None)
                records.append(record)
    compare_to_hf(records)
    compare_to_f32(records)
    host, versions = machine.machine(), machine.versions()
    meta = {"shape": args.shape, "lines": args.lines, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
            "source_tokens_min": min(lengths), "source_tokens_max": max(lengths),
            "source_tokens_median": sorted(lengths)[len(lengths) // 2], "machine": host,
            "d_model": config["d_model"], "vocab_size": config["vocab_size"]}
    records = [{**{k: r[k] for k in RECORD}, **{k: v for k, v in r.items() if k not in RECORD and k != "outputs"},
                "thread_count": args.threads, "max_new_tokens": args.max_new_tokens, "versions": versions,
                "machine": host} for r in records]
    print(markdown_table(records, meta))
    print("\n" + "\n".join(target_lines(records)))
    print(f"\ncommand: python benchmarks/corpus.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"total time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=1))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(records, meta, args.plot)
    return 0 if all(r["status"] != "failed" for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
