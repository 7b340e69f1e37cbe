"""Time nllb_neuronx's greedy decode step alone (one program call per token), e.g. to compare XLA flags or layouts.

    python benchmarks/decode_step.py --batch-size 8 [--steps 30] [--json FILE]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/decode_step.py --batch-size 8

(The second line turns off XLA CPU's default YNNPACK fusions, to compare against XLA's other dot kernels.)

Uses the random-weight checkpoint that `generate.py` caches (run it once with the same --shape first), or --model.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="nllb-200-distilled-600M")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the cached random weights)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", default=None)
    parser.add_argument("--quantize", default=None, choices=["s8", "s8-no-lm-head"],
                        help="int8 weights: every linear and the LM head (s8), or the linears only")
    args = parser.parse_args(argv)

    from nllb_neuronx import NLLBForSampling, QuantizationConfig

    path = args.model or str(Path.home() / ".cache" / "nllb_neuronx" / "bench" / args.shape)
    model = NLLBForSampling.from_pretrained(path, batch_size=args.batch_size, tp_degree=args.tp,
                                            n_positions=[args.steps + 8], encoder_buckets=[args.src_len],
                                            quantization=args.quantize and QuantizationConfig(
                                                quantize_lm_head=args.quantize == "s8")).to_neuron()
    rng = np.random.default_rng(0)
    ids = rng.integers(4, model.config.vocab_size, (args.batch_size, args.src_len))
    ids[:, -1] = model.config.eos_token_id

    def run(steps: int) -> list[float]:
        model.encode(ids, np.ones_like(ids))
        feed = np.tile(np.array([model.config.decoder_start_token_id, 5]), (args.batch_size, 1))
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            token = model.next_tokens(feed)
            times.append(time.perf_counter() - start)
            feed = token[:, None]
        return times[1:]  # the first call consumed the 2-token prefix

    run(3)
    times = np.array(run(args.steps)) * 1e3
    record = {"shape": args.shape, "batch_size": args.batch_size, "tp_degree": args.tp,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "quantize": args.quantize, "ms_per_step_p50": float(np.median(times)),
              "ms_per_step_p90": float(np.percentile(times, 90)), "steps": len(times)}
    print(json.dumps(record))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
