"""Corpus translation on Ray against the plain CLI: lines/s with 1 and 2 replicas, and Ray's fixed overhead.

    python benchmarks/ray_corpus.py --lines 2000 --replicas 1,2 --json benchmarks/out/ray_corpus.json

Each mode is one `nllb-neuronx translate` process over the same text file, timed from start to exit, run twice: on
the whole corpus and on a one-line file. The one-line run is the fixed cost (process start, Ray's local cluster,
actors starting and loading the model); the marginal rate, (lines - 1) / (time(corpus) - time(one line)), is the
throughput once everything is up. Every mode loads programs compiled once beforehand (`--compiled-dir`), so nobody
pays compilation. The outputs of all modes are compared byte for byte with the plain CLI's.

The default model is the `tiny` shape (benchmarks/shapes.py) with a small NLLB tokenizer trained here on the
corpus's words (random weights: the translations are nonsense, the work is real); `--model DIR` takes a real
checkpoint. On a machine with fewer cores than replicas, the replicas share the cores: see the table's `cores`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import machine  # noqa: E402
import shapes  # noqa: E402

WORDS = ("the cat sat on a mat while machines translate many languages every day and night hello world how are "
         "you translation at scale is fun bonjour le monde wie geht es dir").split()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="DIR", help="a checkpoint with its tokenizer (default: tiny, made here)")
    p.add_argument("--lines", type=int, default=2000, help="corpus lines (every 20th empty)")
    p.add_argument("--replicas", default="1,2", help="Ray replica counts to run, comma-separated")
    p.add_argument("--batch-size", type=int, default=8, help="compiled model batch size")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--json", help="write the records here")
    p.add_argument("--workdir", help="keep the corpus, programs and outputs here (default: a temporary directory)")
    return p.parse_args(argv)


def tiny_nllb_checkpoint(path: Path) -> str:
    """The `tiny` shape with a BPE tokenizer trained on WORDS (NllbTokenizer adds the language codes)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import NllbTokenizer

    if (path / "config.json").exists():
        return str(path)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator([" ".join(WORDS)] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = NllbTokenizer(vocab=bpe.get_vocab(), merges=merges)
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    torch.manual_seed(0)
    config = M2M100Config(**{**shapes.SHAPES["tiny"], "vocab_size": len(tokenizer)})
    M2M100ForConditionalGeneration(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def corpus(lines: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    rows = ["" if i % 20 == 19 else " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))).capitalize() + "."
            for i in range(lines)]
    return "".join(r + "\n" for r in rows)


def run(args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nllb_neuronx.cli", "translate", *args], capture_output=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"translate {' '.join(args)} failed:\n{done.stderr.decode()[-3000:]}")
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ray_corpus_"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or tiny_nllb_checkpoint(work / "tiny-nllb")
    (work / "corpus.txt").write_text(corpus(args.lines))
    (work / "one.txt").write_text(corpus(1))
    shape = ["--batch-size", str(args.batch_size), "--n-positions", "32", "--encoder-buckets", "32"]
    common = ["--model", model, "--src", "eng_Latn", "--tgt", "fra_Latn", "--compiled-dir", str(work / "programs"),
              "--max-new-tokens", str(args.max_new_tokens), *shape]
    compile_s = _compile(model, work / "programs", shape)
    modes = [("plain CLI", [])] + [(f"--ray, {n} replica{'s' * (n > 1)}", ["--ray", "--replicas", str(n)])
                                   for n in (int(v) for v in args.replicas.split(","))]
    records = []
    for name, extra in modes:
        tag = name.replace(" ", "_").replace(",", "").replace("-", "")
        full = run(common + extra + ["-i", str(work / "corpus.txt"), "-o", str(work / f"{tag}.out")])
        one = run(common + extra + ["-i", str(work / "one.txt"), "-o", str(work / f"{tag}.one")])
        same = (work / f"{tag}.out").read_bytes() == (work / "plain_CLI.out").read_bytes()
        rate = (args.lines - 1) / (full - one) if full > one else None
        records.append(dict(mode=name, lines=args.lines, seconds=round(full, 2), lines_per_s=round(args.lines / full, 1),
                            fixed_s=round(one, 2), marginal_lines_per_s=round(rate, 1) if rate else None,
                            output_equals_plain=same))
        print(json.dumps(records[-1]), flush=True)
    meta = dict(machine=machine.machine(), versions=machine.versions(), model=model, compile_s=round(compile_s, 1),
                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, load=os.getloadavg())
    print(table(records, meta))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(meta=meta, records=records), indent=2))
    return 0 if all(r["output_equals_plain"] for r in records) else 1


def _compile(model: str, out: Path, shape: list[str]) -> float:
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    subprocess.run([sys.executable, "-m", "nllb_neuronx.cli", "compile", "--model", model, "--out", str(out), *shape],
                   check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def table(records: list[dict], meta: dict) -> str:
    m = meta["machine"]
    lines = [f"{records[0]['lines']} lines, batch {meta['batch_size']}, {meta['max_new_tokens']} new tokens at most; "
             f"{m['cpu']}, {m['cores']} cores; load average at the end {meta['load'][0]:.1f}.", "",
             "| mode | wall s | lines/s (wall) | fixed s (1 line) | lines/s (marginal) | output = plain |",
             "|---|---:|---:|---:|---:|---|"]
    for r in records:
        lines.append(f"| {r['mode']} | {r['seconds']:.1f} | {r['lines_per_s']:.1f} | {r['fixed_s']:.1f} | "
                     f"{r['marginal_lines_per_s'] or '–'} | {'yes' if r['output_equals_plain'] else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
