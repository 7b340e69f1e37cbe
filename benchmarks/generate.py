"""Generation benchmark: nllb_neuronx against HF transformers and CTranslate2, under the same conditions.

    python benchmarks/generate.py --shape nllb-200-distilled-600M --engines nllb_neuronx,hf,ct2-float32,ct2-int8 \\
        --batch-sizes 1,8 --new-tokens 64 --src-len 32 --repeats 2 --warmup 1 \\
        --json benchmarks/out/600m.json --plot benchmarks/out/600m.png

Shapes are random weights at the real NLLB-200 configs (made once, cached under ~/.cache/nllb_neuronx/bench), or
`tiny` for a quick run, or `--model DIR` for a real checkpoint. Every engine and batch size runs in its own worker
process (this script again, with a hidden `--worker ENGINE`), so peak RSS is that engine's alone; every engine gets
the same thread count. Each generates exactly --new-tokens tokens greedily (EOS cannot stop it), the forced
target-language token included. Beside each latency: the floor for one decode step, the bytes of the decoder weights
and LM head divided by the machine's measured read bandwidth. Output: a markdown table on stdout, --json records,
--plot tokens/s by batch size. How each engine is timed: see engines.py (and each record's `timing`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import machine  # noqa: E402
import report  # noqa: E402
import shapes  # noqa: E402

ENGINES = ("nllb_neuronx", "nllb_neuronx-int8", "hf", "ct2-float32", "ct2-int8")
LOG_MARK = "@@ "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--shape", choices=sorted(shapes.SHAPES), default="tiny",
                      help="random weights at this config (cached on disk)")
    what.add_argument("--model", metavar="DIR", help="a real HF M2M100/NLLB checkpoint directory instead")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, from: " + ", ".join(ENGINES))
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--beams", type=int, default=1,
                   help="beam size (nllb_neuronx: the slot engine, beams decided on the device)")
    p.add_argument("--src-len", type=int, default=32, help="source tokens per row (all rows this long)")
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens per row, forced exact")
    p.add_argument("--tp", type=int, default=1, help="nllb_neuronx tensor-parallel degree")
    p.add_argument("--amp", choices=("f32", "bf16", "f16"), default="f32", help="nllb_neuronx and hf precision")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--backend", default=None, help="nllb_neuronx backend (default: its own choice, xla-cpu here)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads (cores) for every engine")
    p.add_argument("--lang-id", type=int, default=None, help="forced target-language token id")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--plot", metavar="FILE")
    p.add_argument("--cache-root", default=str(shapes.DEFAULT_CACHE_ROOT),
                   help="where random checkpoints and CT2 conversions are kept")
    p.add_argument("--bandwidth-mb", type=int, default=1024, help="buffer for the memory bandwidth measurement")
    p.add_argument("--worker-timeout", type=float, default=None, help="seconds before a worker is abandoned")
    p.add_argument("--verbose", action="store_true", help="show all worker output, not only progress lines")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown:
        p.error(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.plot and not args.worker:
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            p.error("--plot needs matplotlib (pip install '.[bench]')")
    if args.new_tokens < 3:
        p.error("--new-tokens must be at least 3 (prefix step + at least one timed single-token step)")
    if min(args.batch_sizes) < 1 or args.repeats < 1 or args.warmup < 0 or args.beams < 1 or args.threads < 1:
        p.error("batch sizes, --repeats, --beams and --threads must be positive, --warmup non-negative")
    return args


# ------------------------------------------------------------------------------------------------------ worker
def worker_main(args) -> int:
    job = json.loads(Path(args.worker_job).read_text())
    threads = job.get("threads")
    if threads and threads < len(os.sched_getaffinity(0)):      # every engine on the same cores, XLA included
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])

    def log(msg):
        print(LOG_MARK + msg, file=sys.stderr, flush=True)

    task = args.worker
    if task == "prepare":  # random weights and CT2 conversions, each only where not cached yet
        result = {"checkpoint": shapes.make_checkpoint(job["shape"], Path(job["cache_root"])) if job["shape"] else
                  {"path": job["checkpoint"], "created": False, "seconds": 0.0}}
        result["converted"] = shapes.convert_ct2_all(Path(result["checkpoint"]["path"]), job["quantizations"],
                                                     Path(job["cache_root"]))
    else:
        import engines
        start = time.perf_counter()
        result = engines.run_engine(task, job, log)
        result["worker_s"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(job["out"]).write_text(json.dumps(result))
    return 0


class Runner:
    """Starts workers one at a time, shows their progress lines, and collects their JSON."""

    def __init__(self, args, total: int):
        from tqdm import tqdm
        self.args, self.tmp = args, Path(tempfile.mkdtemp(prefix="nllb_bench_"))
        self.bar = tqdm(total=total, unit="task", file=sys.stderr, dynamic_ncols=True)
        self.count = 0

    def close(self) -> None:
        self.bar.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def say(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)  # progress stays off stdout, which carries the table

    def run(self, task: str, job: dict, label: str) -> dict:
        self.count += 1
        job = {**job, "out": str(self.tmp / f"{self.count}.json")}
        job_file = self.tmp / f"{self.count}.job.json"
        job_file.write_text(json.dumps(job))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(self.args.threads),
               "TF_CPP_MIN_LOG_LEVEL": "2", "TOKENIZERS_PARALLELISM": "false"}
        self.bar.set_description(label)
        busy, own = _busy_cpu_s(), _children_cpu_s()
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", task, "--worker-job",
                                 str(job_file)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                env=env, errors="replace")
        timer = threading.Timer(self.args.worker_timeout, proc.kill) if self.args.worker_timeout else None
        if timer:
            timer.start()
        tail = collections.deque(maxlen=30)
        for line in proc.stderr:
            line = line.rstrip("\n").split("\r")[-1]
            tail.append(line)
            if line.startswith(LOG_MARK) or self.args.verbose:
                self.say(f"  [{label} {time.perf_counter() - start:6.1f}s] {line.removeprefix(LOG_MARK)}")
        rc = proc.wait()
        if timer:
            timer.cancel()
            rc = f"{rc} (killed after --worker-timeout {self.args.worker_timeout:g} s)" if rc == -9 else rc
        wall = time.perf_counter() - start
        # cores' worth of CPU that other processes used meanwhile: timings are only clean when this stays near 0
        other = max(0.0, (_busy_cpu_s() - busy) - (_children_cpu_s() - own)) / wall if busy is not None else None
        if other is not None and other > 0.15:
            self.say(f"  [{label}] warning: other processes used {other:.2f} cores during this run")
        self.bar.update(1)
        out = Path(job["out"])
        if rc != 0 or not out.exists():
            error = next((t for t in reversed(tail) if t.strip() and not t.startswith(LOG_MARK)), "no output")
            self.say(f"  [{label}] FAILED (exit {rc}): " + "\n    ".join(tail))
            return {"status": "failed", "note": f"worker exit {rc}: {error[-300:]}", "other_cpu_cores": other}
        return {"status": "ok", **json.loads(out.read_text()), "other_cpu_cores": other}


def _busy_cpu_s() -> float | None:
    """Non-idle CPU seconds of the whole machine so far (/proc/stat), or None where there is none."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------------- parent
def engine_available(engine: str) -> str | None:
    if engine.startswith("ct2-"):
        import importlib.util
        if importlib.util.find_spec("ctranslate2") is None:
            return "ctranslate2 is not installed (pip install '.[bench]')"
    return None


COMMON = ("engine", "backend", "shape", "batch_size", "num_beams", "src_len", "new_tokens", "tp_degree", "amp",
          "encoder_ms", "ms_per_token_p50", "ms_per_token_p90", "tokens_per_s", "compile_s", "peak_rss_mb")


def floor_table(config: dict, precisions: dict, engines: list[str], bandwidth: dict) -> dict:
    return {p: dict(zip(("ms", "bytes"), shapes.floor_ms(config, p, bandwidth["read_gbs"])))
            for p in sorted({precisions[e] for e in engines})}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    started = time.perf_counter()
    settings = [(b, e) for b in args.batch_sizes for e in args.engines]
    skips = {e: engine_available(e) for e in args.engines}
    quantizations = sorted({e[len("ct2-"):] for e in args.engines if e.startswith("ct2-") and not skips[e]})
    shape = Path(args.model).name if args.model else args.shape
    cache_root = Path(args.cache_root).expanduser()
    checkpoint = Path(args.model).resolve() if args.model else shapes.checkpoint_dir(args.shape, cache_root)
    ready = (args.model or shapes.checkpoint_ready(checkpoint)) and all(
        (shapes.ct2_dir(checkpoint, q, cache_root) / "model.bin").exists() for q in quantizations)
    runner = Runner(args, (not ready) + len(settings))
    convert_s = dict.fromkeys(quantizations)
    if not ready:  # in a process of its own: making the weights and converting hold the whole torch model
        done = runner.run("prepare", {"shape": None if args.model else args.shape, "checkpoint": str(checkpoint),
                                      "quantizations": quantizations, "cache_root": str(cache_root)}, "prepare")
        if done["status"] != "ok":
            raise SystemExit(f"could not prepare the checkpoint or its CT2 conversions: {done['note']}")
        for what, made in [(args.shape, done["checkpoint"])] + list(done["converted"].items()):
            if made.get("created"):
                runner.say(f"  made {what} in {made['seconds']:.0f} s: {made['path']}")
        for q, made in done["converted"].items():
            if "error" in made:
                skips[f"ct2-{q}"] = f"CT2 conversion failed: {made['error']}"
            convert_s[q] = made["seconds"] if made.get("created") else None
    # named only now: a CT2 directory's name hashes the checkpoint's config.json, which a fresh machine has only
    # after the prepare step made the random weights
    ct2_dirs = {q: str(shapes.ct2_dir(checkpoint, q, cache_root)) for q in quantizations}
    checkpoint = str(checkpoint)
    config = shapes.read_config(checkpoint)
    lang_id = args.lang_id if args.lang_id is not None else (
        256057 if config["vocab_size"] > 256057 else config["vocab_size"] - 1)   # fra_Latn in NLLB-200

    runner.bar.set_description("memory bandwidth")
    bandwidth = machine.measure_bandwidth(args.threads, args.bandwidth_mb)
    runner.say(f"  memory bandwidth: {bandwidth['read_gbs']:.1f} GB/s read, "
                     f"{bandwidth['copy_gbs']:.1f} GB/s copy")

    base_job = {"checkpoint": checkpoint, "config": config, "src_len": args.src_len, "new_tokens": args.new_tokens,
                "beams": args.beams, "tp": args.tp, "amp": args.amp, "backend": args.backend, "threads": args.threads,
                "repeats": args.repeats, "warmup": args.warmup, "lang_id": lang_id,
                "n_positions": args.new_tokens, "encoder_bucket": args.src_len}
    precisions = {"nllb_neuronx": args.amp, "nllb_neuronx-int8": "int8", "hf": args.amp, "ct2-float32": "float32",
                  "ct2-int8": "int8"}   # the floor's bytes per weight (nllb_neuronx-int8: every weight read is s8)
    versions, host = machine.versions(), machine.machine()

    records = []
    for batch, engine in settings:
        record = {"engine": engine, "backend": None, "shape": shape, "batch_size": batch, "num_beams": args.beams,
                  "src_len": args.src_len, "new_tokens": args.new_tokens,
                  "tp_degree": args.tp if engine.startswith("nllb_neuronx") else 1, "amp": precisions[engine]}
        if skips.get(engine):
            runner.bar.update(1)
            result = {"status": "skipped", "note": skips[engine]}
        else:
            job = {**base_job, "batch_size": batch, "ct2_dir": ct2_dirs.get(engine[len("ct2-"):])}
            result = runner.run(engine, job, f"{engine} b={batch}")
            if engine.startswith("ct2-"):
                result["convert_s"] = convert_s.get(engine[len("ct2-"):])
        record.update(result)
        for key in COMMON:
            record.setdefault(key, None)
        records.append(record)
    runner.close()
    again = machine.measure_bandwidth(args.threads, args.bandwidth_mb)
    if again["read_gbs"] > bandwidth["read_gbs"]:
        bandwidth = again
    bandwidth["note"] = "the better of two measurements, before and after the engines"
    floors = floor_table(config, precisions, args.engines, bandwidth)
    for r in records:
        floor = floors[precisions[r["engine"]]]
        r.update(floor_ms=floor["ms"], floor_bytes=floor["bytes"], mem_read_gbs=bandwidth["read_gbs"],
                 mem_copy_gbs=bandwidth["copy_gbs"])
        for q in ("p50", "p90"):
            value = r.get(f"ms_per_token_{q}")
            r[f"{q}_over_floor"] = value / floor["ms"] if value else None

    for r in records:  # greedy outputs of the f32 engines should agree with HF's (random weights: ties are rare)
        ref = next((h for h in records if h["engine"] == "hf" and h["batch_size"] == r["batch_size"]
                    and h.get("output_ids")), None)
        r["matches_hf_row0"] = (r.get("output_ids") == ref["output_ids"]) if ref and r.get("output_ids") else None
    records = [{**{k: r[k] for k in COMMON}, **{k: v for k, v in r.items() if k not in COMMON},
                "thread_count": args.threads, "floor_precision": precisions[r["engine"]], "versions": versions,
                "machine": host} for r in records]
    meta = {"shape": shape, "src_len": args.src_len, "new_tokens": args.new_tokens, "beams": args.beams,
            "threads": args.threads, "machine": host, "bandwidth": bandwidth, "floor": floors}
    print(report.markdown_table(records, meta))
    print(f"\ncommand: python benchmarks/generate.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    print(f"total time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=1))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        report.plot(records, meta, args.plot)
    return 0 if all(r["status"] != "failed" for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
