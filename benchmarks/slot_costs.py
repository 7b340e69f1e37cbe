"""What the slot engine's decode step costs over the lockstep one, A/B in one process (calls alternate, medians).

    python benchmarks/slot_costs.py --batch-size 8 [--steps 20] [--json FILE]

Two comparisons, each a greedy decode step (one token per row, all rows at position `--position`):
- cache writes: one runtime-indexed dynamic-update-slice per row (what `decoder_layer.write_cache` does, every row at
  its own position) against a single write of all rows at row 0's position (the lockstep-only write it replaced);
- cross-attention length: K/V stored at the largest source bucket and read at `--src-len` (the engine while only
  short sources are active) against read at the largest bucket (every slot padded to it), and against K/V stored at
  `--src-len` (the lockstep layout).

Uses the random-weight checkpoint that `generate.py` caches (run it once with the same --shape first), or --model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np

from nllb_neuronx.program_key import CustomProgramKey


@contextlib.contextmanager
def one_write_for_all_rows():
    """Build decoders whose cache write is one dynamic-update-slice of all rows at row 0's position."""
    import hlo
    from nllb_neuronx import decoder_layer

    def write_cache(stack, new, layer, start):
        first = hlo.reshape(hlo.slice_in_dim(start, 0, 1, 0), [])
        return hlo.dynamic_update_slice(stack, hlo.reshape(new, [1, *new.dims]), [layer, 0, 0, first, 0])

    per_row = decoder_layer.write_cache
    decoder_layer.write_cache = write_cache
    try:
        yield
    finally:
        decoder_layer.write_cache = per_row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="nllb-200-distilled-600M")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the cached random weights)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--max-src-len", type=int, default=256)
    parser.add_argument("--n-positions", type=int, default=256)
    parser.add_argument("--position", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from nllb_neuronx import NLLBForSampling
    from nllb_neuronx.decoder import build_decoder
    from nllb_neuronx.slot_encoder import slot_state_shapes

    path = args.model or str(Path.home() / ".cache" / "nllb_neuronx" / "bench" / args.shape)
    model = NLLBForSampling.from_pretrained(path, batch_size=args.batch_size, n_positions=[args.n_positions],
                                            encoder_buckets=sorted({args.src_len, args.max_src_len})).to_neuron()
    shapes, b, t, stored = model.shapes, args.batch_size, args.n_positions, args.max_src_len
    variants = {
        "per_row_write": lambda: build_decoder(shapes, 1, t, args.src_len, "greedy", cross_len=stored),
        "one_write": lambda: build_decoder(shapes, 1, t, args.src_len, "greedy", cross_len=stored),
        "cross_at_max": lambda: build_decoder(shapes, 1, t, stored, "greedy", cross_len=stored),
        "cross_stored_at_src": lambda: build_decoder(shapes, 1, t, args.src_len, "greedy"),   # lockstep's layout
    }
    rng = np.random.default_rng(0)
    state_shapes = {"cache_k": shapes.cache_shape(), "cache_v": shapes.cache_shape(), **slot_state_shapes(shapes)}
    state = {name: model.runtime.put((rng.standard_normal(s.dims) * 0.1).astype(s.dtype.numpy) if s.dtype.is_float
                                     else np.ones(s.dims, s.dtype.numpy)) for name, s in state_shapes.items()}
    short = {name: model.runtime.put(np.asarray(state[name].numpy(0))[..., : args.src_len, :]
                                     if name.startswith("cross") else np.ones((b, args.src_len), np.int32))
             for name in ("cross_k", "cross_v", "encoder_attention_mask")}
    inputs = dict(input_ids=rng.integers(4, 1000, (b, 1)).astype(np.int32),
                  start=np.full(b, args.position, np.int32), active=np.ones(b, np.int32))

    def run(name: str) -> float:
        nonlocal state
        key = CustomProgramKey(name, variants[name])
        begin = time.perf_counter()
        if name == "one_write":
            with one_write_for_all_rows():
                out = model.run_program(key, **inputs, **state)
        elif name == "cross_stored_at_src":
            out = model.run_program(key, **inputs, **{**state, **short})
        else:
            out = model.run_program(key, **inputs, **state)
        out["next_token"].numpy(0)
        state = {**state, "cache_k": out["cache_k"], "cache_v": out["cache_v"]}
        return time.perf_counter() - begin

    for name in variants:                                   # compile and warm up
        run(name), run(name)
    times = {name: [] for name in variants}
    for _ in range(args.steps):
        for name in variants:
            times[name].append(run(name) * 1e3)
    record = {"shape": args.shape, "batch_size": b, "n_positions": t, "src_len": args.src_len, "stored": stored,
              "steps": args.steps, **{f"{n}_ms_p50": float(np.median(v)) for n, v in times.items()},
              **{f"{n}_ms_p10": float(np.percentile(v, 10)) for n, v in times.items()}}
    print(json.dumps(record))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
