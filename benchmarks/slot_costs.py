"""What a slot step costs at each attention read length, A/B in one process (calls alternate, medians).

    python benchmarks/slot_costs.py --batch-size 8 [--n-positions 64,128,256,512] [--steps 20] [--json FILE]

A greedy decode step (one token per row, every row at `--position`) with the self-attention caches stored at the
largest target bucket and the cross-attention K/V at the largest source bucket (the slot engine's layout), read:
- self-attention at each target bucket (`t<T>`: the first T positions; the largest is the stored cache itself),
  cross-attention at `--src-len`;
- cross-attention at the stored length (`t<T_max>_cross_stored`).
On XLA CPU a read shorter than the stored length is a slice, which is copied into a fresh buffer on every call;
a whole parameter is read in place.

Uses the random-weight checkpoint that `generate.py` caches (run it once with the same --shape first), or --model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from nllb_neuronx.program_key import CustomProgramKey


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="nllb-200-distilled-600M")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the cached random weights)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--max-src-len", type=int, default=128)
    parser.add_argument("--n-positions", default="64,128,256,512", help="target buckets; the cache holds the last")
    parser.add_argument("--position", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from nllb_neuronx import NLLBForSampling
    from nllb_neuronx.decoder import build_decoder
    from nllb_neuronx.slot_encoder import slot_state_shapes

    buckets = [int(t) for t in args.n_positions.split(",")]
    path = args.model or str(Path.home() / ".cache" / "nllb_neuronx" / "bench" / args.shape)
    model = NLLBForSampling.from_pretrained(path, batch_size=args.batch_size, n_positions=buckets,
                                            encoder_buckets=sorted({args.src_len, args.max_src_len})).to_neuron()
    shapes, b, stored = model.shapes, args.batch_size, args.max_src_len
    variants = {f"t{t}": (t, args.src_len) for t in buckets}
    variants[f"t{buckets[-1]}_cross_stored"] = (buckets[-1], stored)
    rng = np.random.default_rng(0)
    state_shapes = {**shapes.cache_shapes(), **slot_state_shapes(shapes)}
    state = {name: model.runtime.put((rng.standard_normal(s.dims) * 0.1).astype(s.dtype.numpy) if s.dtype.is_float
                                     else np.ones(s.dims, s.dtype.numpy)) for name, s in state_shapes.items()}
    inputs = dict(input_ids=rng.integers(4, 1000, (b, 1)).astype(np.int32),
                  start=np.full(b, args.position, np.int32), active=np.ones(b, np.int32))

    def run(name: str) -> float:
        nonlocal state
        bucket, source_len = variants[name]
        key = CustomProgramKey(name, lambda: build_decoder(shapes, 1, bucket, source_len, "greedy", cross_len=stored))
        begin = time.perf_counter()
        out = model.run_program(key, **inputs, **state)
        out["next_token"].numpy(0)
        state = {**state, **{n: out[n] for n in shapes.cache_names()}}
        return time.perf_counter() - begin

    for name in variants:                                   # compile and warm up
        run(name), run(name)
    times = {name: [] for name in variants}
    for _ in range(args.steps):
        for name in variants:
            times[name].append(run(name) * 1e3)
    record = {"shape": args.shape, "batch_size": b, "n_positions": buckets, "src_len": args.src_len,
              "stored_source": stored, "steps": args.steps,
              **{f"{n}_ms_p50": round(float(np.median(v)), 2) for n, v in times.items()},
              **{f"{n}_ms_p10": round(float(np.percentile(v, 10)), 2) for n, v in times.items()}}
    print(json.dumps(record))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
