"""What a slot step costs at each attention read length, A/B in one process (calls alternate, medians).

    python benchmarks/slot_costs.py --batch-size 8 [--n-positions 64,128,256,512] [--steps 20] [--json FILE]

A greedy decode step (one token per row, every row at `--position`):
- with the self-attention caches stored at the largest target bucket and the cross-attention K/V at the largest
  source bucket (`--max-src-len`), read at each target bucket (`t<T>`: the first T positions; the largest is the
  stored cache itself) and cross-attention at `--src-len` (how other backends read buckets of one stored size);
- the same, cross-attention read at the stored length (`t<T_max>_cross_stored`);
- with the caches stored at each target bucket and the cross-attention K/V at `--src-len`, read whole
  (`t<T>_stored_at_s<S>`: how XLA CPU stores a state only as long as its rows need, `ProgramShapes.stored_lengths`);
- with `--long-rows` R > 0, the caches in two row segments (`slot_segments.py`): B - R rows stored at each target
  bucket, R at the largest, cross-attention K/V at `--src-len` (`t<T>_long<R>x<T_max>_stored_at_s<S>`: the slot
  engine's state on XLA CPU while R long rows run).
On XLA CPU a read shorter than the stored length is a slice, which is copied into a fresh buffer on every call;
a whole parameter is read in place.

With `--encoder-buckets`, also what admitting new requests costs: the slot encoder on k rows at each source bucket
(`enc_k<k>_s<S>`: encode k sources and write their cross-attention K/V into k rows of a staging area stored as
encode-ahead stores it, `ProgramShapes.staged_length`: on XLA CPU at the bucket; k in the engine's sub-batch sizes),
against the lockstep encoder on a whole batch (`lockstep_enc_s<S>`), and the copy of one request encoded ahead from
its staging row into a slot (`slot_copy`, both stored at `--max-src-len`), each call waited for. `--stage-lengths`
adds the slot encoder at B rows at encode-ahead lengths between the buckets (`enc_k<B>_s<L>`, XLA CPU's
`ProgramShapes.stage_lengths`).

Uses the random-weight checkpoint that `generate.py` caches (run it once with the same --shape first), or --model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hlo.types import s32
from nllb_neuronx.program_key import CustomProgramKey
import shapes as bench_shapes  # benchmarks/shapes.py: this script's directory is on sys.path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_shapes.add_checkpoint_args(parser)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--max-src-len", type=int, default=128)
    parser.add_argument("--n-positions", default="64,128,256,512", help="target buckets; the cache holds the last")
    parser.add_argument("--position", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--encoder-buckets", default="", help="source buckets to time the encoders at (e.g. 32,128)")
    parser.add_argument("--stage-lengths", default="", help="encode-ahead lengths between them (e.g. 8,16,24,40)")
    parser.add_argument("--long-rows", type=int, default=2, help="rows of the long cache segment (0: no split steps)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from nllb_neuronx import NLLBForSampling
    from nllb_neuronx.decoder import build_decoder
    from nllb_neuronx.program_key import SlotCopyKey, SlotEncoderKey
    from nllb_neuronx.slot_copy import STAGED
    from nllb_neuronx.slot_encoder import insert_sizes, slot_state_shapes
    from nllb_neuronx.slot_segments import segments

    buckets = [int(t) for t in args.n_positions.split(",")]
    encoder_buckets = [int(s) for s in args.encoder_buckets.split(",") if s]
    stage_lengths = [int(s) for s in args.stage_lengths.split(",") if s]
    path, checkpoint = bench_shapes.checkpoint_of(args)
    model = NLLBForSampling.from_pretrained(
        path, batch_size=args.batch_size, n_positions=buckets,
        encoder_buckets=sorted({args.src_len, args.max_src_len, *encoder_buckets})).to_neuron()
    shapes, b = model.shapes, args.batch_size
    stored = shapes.max_source_length
    t_max = buckets[-1]
    # name: (target positions read, source positions read, target positions stored, source positions stored)
    variants = {f"t{t}": (t, args.src_len, t_max, stored) for t in buckets}
    variants[f"t{t_max}_cross_stored"] = (t_max, stored, t_max, stored)
    variants.update({f"t{t}_stored_at_s{args.src_len}": (t, args.src_len, t, args.src_len) for t in buckets})
    split = ({f"t{t}_long{args.long_rows}x{t_max}_stored_at_s{args.src_len}": t for t in buckets}
             if args.long_rows else {})
    rng = np.random.default_rng(0)

    def put_random(shapes_by_name: dict) -> dict:
        return {name: model.runtime.put((rng.standard_normal(s.dims) * 0.1).astype(s.dtype.numpy) if s.dtype.is_float
                                        else np.ones(s.dims, s.dtype.numpy)) for name, s in shapes_by_name.items()}

    state = put_random(slot_state_shapes(shapes))                                     # cross stored at S_max
    short_cross = put_random({**shapes.cross_shapes(args.src_len),
                              "encoder_attention_mask": s32[b, args.src_len]})        # cross stored at --src-len
    caches = {t: put_random(shapes.cache_shapes(t)) for t in buckets}                   # caches stored at each T
    short_seg, long_seg = segments(b, args.long_rows) if args.long_rows else (None, None)
    split_caches = {t: put_random({**short_seg.cache_shapes(shapes, t), **long_seg.cache_shapes(shapes, t_max)})
                    for t in split.values()}                                        # short at each T, long at T_max
    inputs = dict(input_ids=rng.integers(4, 1000, (b, 1)).astype(np.int32),
                  start=np.full(b, args.position, np.int32), active=np.ones(b, np.int32))

    def run(name: str) -> float:
        bucket, source_len, cache_len, cross_len = variants[name]
        key = CustomProgramKey(name, lambda: build_decoder(shapes, 1, bucket, source_len, "greedy",
                                                           cross_len=cross_len, cache_len=cache_len))
        begin = time.perf_counter()
        cross = state if cross_len == stored else short_cross
        out = model.run_program(key, **inputs, **cross, **caches[cache_len])
        out["next_token"].numpy(0)
        caches[cache_len] = {n: out[n] for n in shapes.cache_names()}
        return time.perf_counter() - begin

    def run_split(name: str) -> float:
        t = split[name]
        key = CustomProgramKey(name, lambda: build_decoder(shapes, 1, t, args.src_len, "greedy", cache_len=t,
                                                           long_rows=args.long_rows, long_len=t_max))
        begin = time.perf_counter()
        out = model.run_program(key, **inputs, **short_cross, **split_caches[t])
        out["next_token"].numpy(0)
        split_caches[t] = {n: out[n] for n in split_caches[t]}
        return time.perf_counter() - begin

    staging: dict[int, dict] = {}                                   # encode-ahead areas by staged length

    def encode_slots(rows: int, source_len: int) -> float:
        staged = model.programs.build_shapes.staged_length(model.compile_config.encoder_bucket(source_len))
        area = staging.pop(staged, None) or put_random(slot_state_shapes(shapes, staged))
        ids = rng.integers(4, 1000, (rows, source_len)).astype(np.int32)
        begin = time.perf_counter()
        out = model.run_program(SlotEncoderKey(source_len, rows, staged), input_ids=ids,
                                attention_mask=np.ones_like(ids), slots=np.arange(rows, dtype=np.int32), **area)
        out["encoder_attention_mask"].wait()
        staging[staged] = out
        return time.perf_counter() - begin

    staged_rows = {STAGED + n: t for n, t in put_random(slot_state_shapes(shapes)).items()}

    def copy_staged() -> float:
        nonlocal state
        begin = time.perf_counter()
        out = model.run_program(SlotCopyKey(stored), row=np.array([3], np.int32), slot=np.array([1], np.int32),
                                **staged_rows, **{n: state[n] for n in slot_state_shapes(shapes)})
        out["encoder_attention_mask"].wait()
        state = {**state, **out}
        return time.perf_counter() - begin

    def encode_batch(source_len: int) -> float:
        ids = rng.integers(4, 1000, (b, source_len)).astype(np.int32)
        begin = time.perf_counter()
        model.encode(ids, np.ones_like(ids))
        model.wait()
        return time.perf_counter() - begin

    calls = {name: (lambda name=name: run(name)) for name in variants}
    calls.update({name: (lambda name=name: run_split(name)) for name in split})
    for s in encoder_buckets:
        calls.update({f"enc_k{k}_s{s}": (lambda k=k, s=s: encode_slots(k, s)) for k in insert_sizes(b)})
        calls[f"lockstep_enc_s{s}"] = lambda s=s: encode_batch(s)
    for length in stage_lengths:
        calls[f"enc_k{b}_s{length}"] = lambda length=length: encode_slots(b, length)
    if encoder_buckets:
        calls["slot_copy"] = copy_staged
    for call in calls.values():                             # compile and warm up
        call(), call()
    times = {name: [] for name in calls}
    for _ in range(args.steps):
        for name, call in calls.items():
            times[name].append(call() * 1e3)
    record = {**checkpoint, "batch_size": b, "n_positions": buckets, "src_len": args.src_len,
              "long_rows": args.long_rows,
              "stored_source": stored, "steps": args.steps, "encoder_buckets": encoder_buckets,
              "stage_lengths": stage_lengths,
              **{f"{n}_ms_p50": round(float(np.median(v)), 2) for n, v in times.items()},
              **{f"{n}_ms_p10": round(float(np.percentile(v, 10)), 2) for n, v in times.items()}}
    print(json.dumps(record))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
