"""Time nllb_neuronx's greedy decode step alone, e.g. to compare XLA flags, layouts or steps per call.

    python benchmarks/decode_step.py --batch-size 8 [--steps 30] [--json FILE]
    python benchmarks/decode_step.py --batch-size 1 --unroll 1,2,4 [--rounds 30]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/decode_step.py --batch-size 8

The first line times `--steps` consecutive one-token calls (`model.next_tokens`, until the token is on the host).
`--unroll 1,2,4` compares steps per decoder call instead: each round makes one call of every count in turn
(`model.greedy_steps`; 1 is `next_tokens`), interleaved so load drift hits every count alike, and reports ms per
token (call time / steps). The third line turns off XLA CPU's default YNNPACK fusions, to compare dot kernels.

Uses the random-weight checkpoint that `generate.py` caches (run it once with the same --shape first), or --model.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import shapes as bench_shapes  # benchmarks/shapes.py: this script's directory is on sys.path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_shapes.add_checkpoint_args(parser)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--unroll", default=None, help="comma-separated steps per call to compare, e.g. 1,2,4")
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the --unroll comparison")
    parser.add_argument("--bucket", type=int, default=64, help="target bucket of the --unroll comparison")
    parser.add_argument("--json", default=None)
    parser.add_argument("--quantize", default=None, choices=["s8", "s8-no-lm-head"],
                        help="int8 weights: every linear and the LM head (s8), or the linears only")
    args = parser.parse_args(argv)

    from nllb_neuronx import NLLBForSampling, QuantizationConfig

    path, checkpoint = bench_shapes.checkpoint_of(args)
    positions = args.bucket if args.unroll else args.steps + 8
    model = NLLBForSampling.from_pretrained(path, batch_size=args.batch_size, tp_degree=args.tp,
                                            n_positions=[positions], encoder_buckets=[args.src_len],
                                            quantization=args.quantize and QuantizationConfig(
                                                quantize_lm_head=args.quantize == "s8")).to_neuron()
    rng = np.random.default_rng(0)
    ids = rng.integers(4, model.config.vocab_size, (args.batch_size, args.src_len))
    ids[:, -1] = model.config.eos_token_id
    record = {**checkpoint, "batch_size": args.batch_size, "tp_degree": args.tp,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_average": os.getloadavg()[0],
              "quantize": args.quantize}
    if args.unroll:
        record.update(compare_unroll(model, ids, [int(n) for n in args.unroll.split(",")], args.rounds, args.bucket))
    else:
        record.update(consecutive_steps(model, ids, args.steps))
    print(json.dumps(record))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


def consecutive_steps(model, ids, steps: int) -> dict:
    def run(count: int) -> list[float]:
        model.encode(ids, np.ones_like(ids))
        feed = np.tile(np.array([model.config.decoder_start_token_id, 5]), (ids.shape[0], 1))
        times = []
        for _ in range(count):
            start = time.perf_counter()
            token = model.next_tokens(feed)
            times.append(time.perf_counter() - start)
            feed = token[:, None]
        return times[1:]  # the first call consumed the 2-token prefix

    run(3)
    times = np.array(run(steps)) * 1e3
    return {"ms_per_step_p50": float(np.median(times)), "ms_per_step_p90": float(np.percentile(times, 90)),
            "steps": len(times)}


def compare_unroll(model, ids, counts: list[int], rounds: int, bucket: int) -> dict:
    """ms per token of one call of each unroll count per round; the position restarts before the bucket fills."""
    model.encode(ids, np.ones_like(ids))
    feed = {"tokens": np.full((ids.shape[0], 1), 5)}

    def call(n: int) -> float:
        if model.position + n > bucket:
            model.reset()
        start = time.perf_counter()
        tokens = model.next_tokens(feed["tokens"])[:, None] if n == 1 else model.greedy_steps(feed["tokens"], n)
        seconds = time.perf_counter() - start
        feed["tokens"] = tokens[:, -1:]
        return seconds * 1e3 / n

    compile_s = {}
    for n in counts:                                                       # compile, warm up
        begin = time.perf_counter()
        call(n)
        compile_s[n] = time.perf_counter() - begin
        call(n)
    per_token = {n: [] for n in counts}
    for _ in range(rounds):
        for n in counts:
            per_token[n].append(call(n))
    return {"unroll_ms_per_token_p50": {n: float(np.median(v)) for n, v in per_token.items()},
            "unroll_ms_per_token_p10": {n: float(np.percentile(v, 10)) for n, v in per_token.items()},
            "rounds": rounds, "bucket": bucket, "first_call_s": compile_s}


if __name__ == "__main__":
    raise SystemExit(main())
