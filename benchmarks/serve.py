"""Serving benchmark: a bounded load generator against `nllb-neuronx serve` on localhost, with continuous batching on
and off (`--no-continuous-batching`: one lockstep batch at a time), at several concurrency levels.

    python benchmarks/serve.py --shape tiny --concurrency 1,4,16 --requests 64 --max-seconds 60 \\
        --json benchmarks/out/serve-tiny.json

Each server runs in its own process (the real CLI) on a free port; the benchmark waits for /ready (programs
compiled, into a cached --compiled-dir shared by both runs), sends a few warm-up requests, then for each
concurrency level sends a fixed list of `--requests` requests (seeded: 1-16 lines each, a max_new_tokens drawn per
request, since random weights never emit EOS) from that many client threads, stopping early at `--max-seconds`.
Figures: requests/s, lines/s, generated tokens/s (the server's own `usage`), p50/p99 request latency, non-200
answers. The engine that really ran is read from /ready (without nllb_neuronx.engine, both runs are BatchEngine).
Shapes are random weights (shapes.py, cached) with a small BPE tokenizer made here; `--model DIR` takes a real
checkpoint with its tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import machine  # noqa: E402
import shapes  # noqa: E402

MODES = {"continuous": [], "lockstep": ["--no-continuous-batching"]}
WORDS = ("the cat sat on a mat while machines translate many languages every day and people read what they "
         "wrote in the morning before the train left the station").split()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--shape", choices=sorted(shapes.SHAPES), default="tiny")
    what.add_argument("--model", metavar="DIR", help="a real checkpoint directory with its tokenizer")
    p.add_argument("--modes", default="continuous,lockstep", help="comma-separated: " + ", ".join(MODES))
    p.add_argument("--concurrency", default="1,4,16", help="client threads, comma-separated levels")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--max-seconds", type=float, default=60.0, help="cap per concurrency level")
    p.add_argument("--max-lines", type=int, default=16, help="lines per request: 1 to this")
    p.add_argument("--max-new-tokens", type=int, default=24, help="per request: drawn from 4 to this")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-positions", default="32")
    p.add_argument("--encoder-buckets", default="32")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--src", default="eng_Latn")
    p.add_argument("--tgt", default="fra_Latn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup-timeout", type=float, default=1800.0)
    p.add_argument("--cache-root", default=str(shapes.DEFAULT_CACHE_ROOT))
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in args.modes):
        p.error(f"--modes takes {', '.join(MODES)}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.requests < 1 or args.max_seconds <= 0 or not 1 <= args.max_lines:
        p.error("--requests, --max-seconds and --max-lines must be positive")
    return args


# ------------------------------------------------------------------------------------------------------ model
def serving_checkpoint(shape: str, cache_root: Path) -> Path:
    """The shape's cached random checkpoint, linked into a directory with a small NLLB tokenizer beside it."""
    source = Path(shapes.make_checkpoint(shape, cache_root)["path"])
    path = Path(cache_root) / "serve" / shape
    if (path / "tokenizer_config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.suffix in (".json", ".safetensors") and not (path / f.name).exists():
            (path / f.name).symlink_to(f.resolve())
    _small_tokenizer().save_pretrained(path)
    return path


def _small_tokenizer():
    """NllbTokenizer over a BPE trained on WORDS (its ids stay below the shape's vocabulary; language codes added)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import NllbTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator([" ".join(WORDS)] * 20, trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    return NllbTokenizer(vocab=bpe.get_vocab(), merges=merges)


# ----------------------------------------------------------------------------------------------------- server
class ServerProcess:
    def __init__(self, args, model: Path, mode: str, log_path: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        compiled = Path(args.cache_root) / "serve" / "compiled" / (
            f"{model.name}-b{args.batch_size}-tp{args.tp}-n{args.n_positions}-e{args.encoder_buckets}")
        command = [sys.executable, "-m", "nllb_neuronx.cli", "serve", "--model", str(model), "--port", str(self.port),
                   "--batch-size", str(args.batch_size), "--tp", str(args.tp), "--n-positions", args.n_positions,
                   "--encoder-buckets", args.encoder_buckets, "--compiled-dir", str(compiled),
                   "--max-queue", str(max(args.concurrency) * args.max_lines * 2), "--request-timeout", "600",
                   *MODES[mode]]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float) -> dict:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log.name}")
            try:
                r = httpx.get(self.url + "/ready", timeout=5)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready in {timeout_s} s; see {self.log.name}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.log.close()


# ------------------------------------------------------------------------------------------------------- load
def make_requests(args, count: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10))).capitalize() + "."
                 for _ in range(rng.randint(1, args.max_lines))]
        requests.append({"texts": texts, "source": args.src, "target": args.tgt, "split_long": True,
                         "max_new_tokens": rng.randint(4, args.max_new_tokens)})
    return requests


def run_level(url: str, requests: list[dict], concurrency: int, max_seconds: float) -> dict:
    """Send `requests` from `concurrency` threads, none started after `max_seconds`; latency per answered request."""
    import httpx

    lock, next_index, done = threading.Lock(), [0], []
    start = time.perf_counter()

    def client():
        with httpx.Client(timeout=max_seconds + 600) as http:
            while time.perf_counter() - start < max_seconds:
                with lock:
                    if next_index[0] >= len(requests):
                        return
                    body = requests[next_index[0]]
                    next_index[0] += 1
                sent = time.perf_counter()
                r = http.post(url + "/v1/translate", json=body)
                usage = r.json().get("usage", {}) if r.status_code == 200 else {}
                with lock:
                    done.append((r.status_code, time.perf_counter() - sent, len(body["texts"]),
                                 usage.get("output_tokens", 0)))

    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    elapsed = time.perf_counter() - start
    ok = [d for d in done if d[0] == 200]
    latencies = sorted(d[1] for d in ok)

    def pct(q):
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    return {"concurrency": concurrency, "requests": len(done), "ok": len(ok), "errors": len(done) - len(ok),
            "seconds": round(elapsed, 3), "requests_per_s": len(ok) / elapsed, "lines_per_s": sum(d[2] for d in ok)
            / elapsed, "tokens_per_s": sum(d[3] for d in ok) / elapsed, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "capped": len(done) < len(requests)}


def markdown_table(records: list[dict], meta: dict) -> str:
    def num(v, digits=1):
        return "–" if v is None else f"{v:,.{digits}f}"

    m = meta["machine"]
    lines = [f"Shape `{meta['shape']}`, batch {meta['batch_size']}, tp {meta['tp']}, {meta['requests']} requests of "
             f"1–{meta['max_lines']} lines per level (max_new_tokens 4–{meta['max_new_tokens']}), cap "
             f"{meta['max_seconds']} s; machine: {m['cpu']}, {m['cores']} cores.", "",
             "| mode | engine | clients | requests ok | errors | requests/s | lines/s | tokens/s | p50 ms | p99 ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        capped = " (capped)" if r["capped"] else ""
        lines.append(f"| {r['mode']} | {r['engine']} | {r['concurrency']} | {r['ok']}{capped} | {r['errors']} | "
                     f"{num(r['requests_per_s'], 2)} | {num(r['lines_per_s'])} | {num(r['tokens_per_s'])} | "
                     f"{num(r['p50_ms'], 0)} | {num(r['p99_ms'], 0)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    model = Path(args.model) if args.model else serving_checkpoint(args.shape, Path(args.cache_root))
    logs = Path(args.cache_root) / "serve" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    records = []
    for mode in args.modes:
        server = ServerProcess(args, model, mode, logs / f"{mode}.log")
        try:
            ready = server.wait_ready(args.startup_timeout)
            engine = ready.get("engine", "?")
            run_level(server.url, make_requests(args, 4, seed=args.seed + 999), 2, args.max_seconds)  # warm-up
            for level in args.concurrency:
                record = run_level(server.url, make_requests(args, args.requests, args.seed + level), level,
                                   args.max_seconds)
                records.append({"mode": mode, "engine": engine, **record})
                print(f"@@ {mode} ({engine}) clients {level}: {record['requests_per_s']:.2f} req/s, "
                      f"{record['lines_per_s']:.1f} lines/s, p50 {record['p50_ms']} ms", file=sys.stderr)
        finally:
            code = server.stop()
            if code != 0:
                print(f"@@ {mode} server exited with {code}; see {logs / (mode + '.log')}", file=sys.stderr)
    meta = {"shape": args.model or args.shape, "batch_size": args.batch_size, "tp": args.tp,
            "requests": args.requests, "max_lines": args.max_lines, "max_new_tokens": args.max_new_tokens,
            "max_seconds": args.max_seconds, "concurrency": args.concurrency, "machine": machine.machine(),
            "versions": machine.versions()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "records": records}, indent=2))
    print(markdown_table(records, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
