"""Where the greedy decode step's time goes: the step and each kind of its work alone, built with our own `hlo` API at
the model's exact shapes, timed interleaved in one process (one call of each per round, medians over the rounds).

    python benchmarks/profile_step.py --batch-size 1 [--rounds 30] [--tp 1] [--json FILE]

Parts (each its own program, fed the model's device weights by name; `--tp 2` runs them all at tp 2 on virtual CPU
devices and adds the collectives):
- `lm_head_greedy`: final layer norm, the LM head `W[V, H] @ h[H, B]`, the greedy head (padding mask, NaN test,
  argmax as reduce-max + reduce-min); `lm_head_max`: the same with a plain reduce-max instead of the greedy head
  (their difference is the argmax's cost).
- `projections`: every decoder linear of the 12 layers (self-attn q/k/v/out, cross-attn q/out, fc1/fc2, biases,
  relu, residual adds), nothing else.
- `attention`: per layer the cache writes (one per row), scores/softmax/values against the cache bucket and against
  the cross K/V, the heads' reshapes and transposes; no projections.
- `norms_embed`: embedding lookup, positions, masks, the 36 layer norms and their residual adds.
- `call_all_args`: a program that takes every parameter the step takes (~200 weight buffers, caches aliased) and
  does nothing but return the input ids: PJRT dispatch, argument handling, the token's copy in and out.
- `call_one_arg`: the same with the ids as its only parameter (so `call_all_args - call_one_arg` is what the
  weight arguments cost per call); `call_all_args_unbound`: `call_all_args` with every weight argument checked and
  converted again on each call (`Program.run`), as before the registry bound the weights (`Program.bind`).
- `step`: the real greedy decoder program (`DecoderKey`), through `model.run_program`; `next_tokens`: the same step
  through `model.next_tokens` (host-side input checks and bookkeeping included).
- `step_no_collectives` (tp > 1 only): the step with every all-reduce replaced by the identity (wrong numbers, same
  work otherwise), so `step - step_no_collectives` is what the collectives cost.

Each part's own call overhead is in its time: the table gives the sum of the parts (`call_one_arg` subtracted from
each part but one) against the step. Shares are of the step's median in the same run: read those on a loaded
machine. Uses the random-weight checkpoint that `generate.py` caches (run it once with the same --shape first), or
--model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

import hlo
from hlo import nn
from hlo.types import f32, s32
from nllb_neuronx import decoder_layer, heads, layers
from nllb_neuronx.decoder import build_decoder
from nllb_neuronx.program_key import CustomProgramKey, DecoderKey, ProgramKey
from nllb_neuronx.program_spec import ProgramShapes, layer_name, weight_params
import shapes as bench_shapes  # benchmarks/shapes.py: this script's directory is on sys.path


def _spec(shapes: ProgramShapes, names: list[str], **inputs) -> hlo.ParamSpec:
    spec = hlo.ParamSpec(**inputs)
    for name, shape in weight_params(names, shapes):
        spec.add(name, shape)
    return spec


def _layer_names(shapes: ProgramShapes, kinds: tuple[str, ...]) -> list[str]:
    return [n for n in shapes.decoder_weight_names() if n.startswith("decoder.layers.") and n.split(".", 3)[3]
            .rsplit(".", 1)[0] in kinds]


def build_lm_head(shapes: ProgramShapes, greedy: bool) -> hlo.Module:
    m, b, tp = shapes.model, shapes.batch_size, shapes.parallel.tp
    spec = _spec(shapes, ["shared.weight", "decoder.layer_norm.weight", "decoder.layer_norm.bias"],
                 h=f32[m.d_model, b])

    def program(p):
        last = layers.layer_norm(p.h, p.__getitem__, "decoder.layer_norm", axis=0)               # [H, B]
        logits = hlo.dot_general(p["shared.weight"], last, ([1], [0]), preferred_element_type=f32)  # [V_local, B]
        if greedy:
            return {"next_token": heads.greedy(logits, m.vocab_size, tp)}                      # [B]
        return {"best": hlo.reduce_max(logits, [0])}                                            # [B]
    return hlo.build(f"profile_lm_head_{'greedy' if greedy else 'max'}_b{b}_tp{tp}", spec, program)


PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
               "encoder_attn.q_proj", "encoder_attn.out_proj", "fc1", "fc2")


def build_projections(shapes: ProgramShapes) -> hlo.Module:
    m, b, tp = shapes.model, shapes.batch_size, shapes.parallel.tp
    spec = _spec(shapes, _layer_names(shapes, PROJECTIONS), h=f32[m.d_model, b])

    def program(p):
        w, h = p.__getitem__, p.h                                                                # [H, B]
        for i in range(m.decoder_layers):
            pre = f"decoder.layers.{i}"
            qkv = [nn.linear_columns(h, w(f"{pre}.self_attn.{x}_proj.weight"), w(f"{pre}.self_attn.{x}_proj.bias"))
                   for x in "qkv"]                                                               # [N_local*D, B]
            h = h + decoder_layer.row_parallel(qkv[0] + qkv[1] + qkv[2], w, f"{pre}.self_attn.out_proj",
                                               shapes.parallel)
            q = nn.linear_columns(h, w(f"{pre}.encoder_attn.q_proj.weight"), w(f"{pre}.encoder_attn.q_proj.bias"))
            h = h + decoder_layer.row_parallel(q, w, f"{pre}.encoder_attn.out_proj", shapes.parallel)
            ffn = nn.relu(nn.linear_columns(h, w(f"{pre}.fc1.weight"), w(f"{pre}.fc1.bias")))   # [F_local, B]
            h = h + decoder_layer.row_parallel(ffn, w, f"{pre}.fc2", shapes.parallel)
        return {"h": h}
    return hlo.build(f"profile_projections_b{b}_tp{tp}", spec, program)


def build_attention(shapes: ProgramShapes, bucket: int, source_len: int) -> hlo.Module:
    m, b, par = shapes.model, shapes.batch_size, shapes.parallel
    n, d = par.heads_local, par.head_dim
    cache_len = shapes.stored_target_length(bucket)              # as the decoder stores them on this backend
    state = {**shapes.cache_shapes(cache_len), **shapes.cross_shapes(source_len)}
    spec = hlo.ParamSpec(x=f32[n * d, b], start=s32[b], encoder_attention_mask=s32[b, source_len])
    for name, shape in state.items():
        spec.add(name, shape)

    def program(p):
        query_pos = hlo.broadcast_in_dim(p.start, [b, 1, bucket], [0])
        self_mask = layers.additive_mask(hlo.compare(hlo.iota(s32[b, 1, bucket], 2), query_pos, "LE"))
        keep = hlo.compare(p.encoder_attention_mask, 0, "NE")                                     # [B, S]
        cross_mask = layers.additive_mask(hlo.broadcast_in_dim(keep, [b, 1, source_len], [0, 2]))
        caches, acc = {name: p[name] for name in shapes.cache_names()}, p.x
        for i in range(m.decoder_layers):
            heads_of = lambda y: hlo.transpose(hlo.reshape(y, [n, d, 1, b]), [3, 0, 2, 1])    # [B, N, 1, D]
            q, k, v = heads_of(acc), heads_of(acc + 1.0), heads_of(acc + 2.0)
            ck, cv = layer_name("cache_k", i), layer_name("cache_v", i)
            caches[ck] = decoder_layer.write_cache(caches[ck], k, p.start)
            caches[cv] = decoder_layer.write_cache(caches[cv], v, p.start)
            keys = decoder_layer.first_positions(caches[ck], bucket)
            values = decoder_layer.first_positions(caches[cv], bucket)
            acc = acc + decoder_layer.attend(q, keys, values, self_mask)                        # [N*D, B]
            keys, values = p[layer_name("cross_k", i)], p[layer_name("cross_v", i)]              # [B, N, S, D]
            acc = acc + decoder_layer.attend(heads_of(acc), keys, values, cross_mask)
        return {"x": acc, **caches}
    return hlo.build(f"profile_attention_b{b}_t{bucket}_s{source_len}_tp{par.tp}", spec, program,
                     aliases={name: name for name in shapes.cache_names()})


def build_norms_embed(shapes: ProgramShapes, bucket: int) -> hlo.Module:
    m, b, tp = shapes.model, shapes.batch_size, shapes.parallel.tp
    norms = [n for n in shapes.decoder_weight_names() if "layer_norm" in n]
    spec = _spec(shapes, ["shared.weight"] + norms, input_ids=s32[b, 1], start=s32[b],
                 positions=shapes.positions_shape)

    def program(p):
        w, ids = p.__getitem__, p.input_ids                                                      # [B, 1]
        not_pad = hlo.convert(hlo.compare(ids, m.pad_token_id, "NE"), s32)
        position_ids = layers.positions(ids, not_pad + hlo.reshape(p.start, [b, 1]), m.pad_token_id)
        h = layers.embed_tokens(hlo.transpose(ids, [1, 0]), w("shared.weight"), shapes.embed_scale, tp)
        h = h + hlo.take(p.positions, hlo.transpose(position_ids, [1, 0]))                       # [1, B, H]
        h = hlo.reshape(hlo.transpose(h, [2, 0, 1]), [m.d_model, b])                             # [H, B]
        query_pos = hlo.broadcast_in_dim(p.start, [b, 1, bucket], [0])
        mask = layers.additive_mask(hlo.compare(hlo.iota(s32[b, 1, bucket], 2), query_pos, "LE"))
        for i in range(m.decoder_layers):
            for norm in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"):
                h = h + layers.layer_norm(h, w, f"decoder.layers.{i}.{norm}", axis=0)
        h = layers.layer_norm(h, w, "decoder.layer_norm", axis=0)
        return {"h": h, "mask_sum": hlo.reduce_sum(mask, [0, 1, 2])}
    return hlo.build(f"profile_norms_embed_b{b}_t{bucket}_tp{tp}", spec, program)


def build_call(shapes: ProgramShapes, step: hlo.Module | None) -> hlo.Module:
    """The step's parameters (or only the ids, `step=None`), returning the ids as the token."""
    b = shapes.batch_size
    spec = step.params if step is not None else hlo.ParamSpec(input_ids=s32[b, 1])
    aliases = {name: name for name in shapes.cache_names()} if step is not None else None

    def program(p):
        out = {"next_token": hlo.reshape(p.input_ids, [b]) + 0}
        if step is not None:
            out.update({name: p[name] for name in shapes.cache_names()})
        return out
    return hlo.build(f"profile_call_{'all' if step is not None else 'one'}_args_b{b}", spec, program, aliases=aliases)


@contextlib.contextmanager
def no_all_reduce():
    """Build the decoder with every all-reduce the identity (collective cost = step - this)."""
    saved = decoder_layer.all_reduce, layers.all_reduce
    decoder_layer.all_reduce = layers.all_reduce = lambda x, tp: x
    try:
        yield
    finally:
        decoder_layer.all_reduce, layers.all_reduce = saved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_shapes.add_checkpoint_args(parser)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--bucket", type=int, default=64, help="target bucket the step attends over")
    parser.add_argument("--position", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from nllb_neuronx import NLLBForSampling

    path, checkpoint = bench_shapes.checkpoint_of(args)
    model = NLLBForSampling.from_pretrained(path, batch_size=args.batch_size, tp_degree=args.tp,
                                            n_positions=[args.bucket], encoder_buckets=[args.src_len]).to_neuron()
    shapes, b, t, s = model.programs.build_shapes, args.batch_size, args.bucket, args.src_len
    m, put = shapes.model, model.runtime.put
    rng = np.random.default_rng(0)
    src = rng.integers(4, m.vocab_size, (b, s)).astype(np.int32)
    src[:, -1] = m.eos_token_id
    model.encode(src, np.ones_like(src))
    step_key = DecoderKey(s, "greedy", 1, t)
    step_module = step_key.build(shapes)
    parts: dict[str, tuple[ProgramKey, Callable[[], dict]]] = {}

    ids = rng.integers(4, 1000, (b, 1)).astype(np.int32)
    start = np.full(b, args.position, np.int32)
    state = {name: put((rng.standard_normal(sh.dims) * 0.1).astype(np.float32))
             for name, sh in {**shapes.cache_shapes(), **shapes.cross_shapes(s)}.items()}
    cross = {name: state[name] for name in shapes.cross_names()}
    step_inputs = dict(input_ids=ids, start=start, active=np.ones(b, np.int32),
                       encoder_attention_mask=np.ones((b, s), np.int32), **cross)

    def caches() -> dict:
        return {name: state[name] for name in shapes.cache_names()}

    def keep_caches(out: dict) -> None:
        state.update({name: out[name] for name in shapes.cache_names()})
    h = (rng.standard_normal((m.d_model, b)) * 0.5).astype(np.float32)

    def with_caches(key, **inputs):
        def call():
            out = model.run_program(key, **inputs, **caches())
            keep_caches(out)
            return out
        return key, call

    def plain(key, **inputs):
        return key, lambda: model.run_program(key, **inputs)

    parts["step"] = with_caches(step_key, **step_inputs)
    feed = {"tokens": ids}

    def next_tokens():
        if model.position >= t - 1:
            model.reset()
        feed["tokens"] = model.next_tokens(feed["tokens"])[:, None]
        return {}
    parts["next_tokens"] = (step_key, next_tokens)
    parts["lm_head_greedy"] = plain(CustomProgramKey("lm_head_greedy", lambda: build_lm_head(shapes, True)), h=h)
    parts["lm_head_max"] = plain(CustomProgramKey("lm_head_max", lambda: build_lm_head(shapes, False)), h=h)
    parts["projections"] = plain(CustomProgramKey("projections", lambda: build_projections(shapes)), h=h)
    nd = shapes.parallel.heads_local * shapes.parallel.head_dim
    parts["attention"] = with_caches(CustomProgramKey("attention", lambda: build_attention(shapes, t, s)),
                                     x=(h[:nd] * 0.1).astype(np.float32), start=start,
                                     encoder_attention_mask=step_inputs["encoder_attention_mask"],
                                     **cross)
    parts["norms_embed"] = plain(CustomProgramKey("norms_embed", lambda: build_norms_embed(shapes, t)), input_ids=ids,
                                 start=start)
    parts["call_all_args"] = with_caches(CustomProgramKey("call_all_args", lambda: build_call(shapes, step_module)),
                                         **step_inputs)
    def unbound():  # every weight argument checked and converted on every call, as before `Program.bind`
        registry = model.programs
        program = registry.get(CustomProgramKey("call_all_args", lambda: build_call(shapes, step_module)))
        out = program.run({**{n: registry.weights[n] for n in program.module.params.names if n in registry.weights},
                           **step_inputs, **caches()})
        keep_caches(out)
        return out
    parts["call_all_args_unbound"] = (None, unbound)
    parts["call_one_arg"] = plain(CustomProgramKey("call_one_arg", lambda: build_call(shapes, None)), input_ids=ids)
    if args.tp > 1:
        def no_collectives():
            with no_all_reduce():
                return build_decoder(shapes, 1, t, s, "greedy")
        parts["step_no_collectives"] = with_caches(CustomProgramKey("step_no_collectives", no_collectives),
                                                   **step_inputs)

    def timed(call) -> float:
        begin = time.perf_counter()
        out = call()
        for name, value in out.items():
            if not name.startswith("cache"):
                value.numpy(0)                                                                   # wait for it
        return (time.perf_counter() - begin) * 1e3

    compile_s = {}
    for name, (key, call) in parts.items():                                                     # compile, warm up
        begin = time.perf_counter()
        timed(call)
        compile_s[name] = time.perf_counter() - begin
        timed(call)
    times = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, (_, call) in parts.items():
            times[name].append(timed(call))
    med = {name: float(np.median(v)) for name, v in times.items()}
    report(args, med, times, compile_s, model)
    return 0


def report(args, med: dict, times: dict, compile_s: dict, model) -> None:
    step, one = med["step"], med["call_one_arg"]
    kinds = {  # kind of work -> its time net of one call's fixed overhead
        "LM head + greedy head": med["lm_head_greedy"] - one,
        "  of which argmax/greedy head": med["lm_head_greedy"] - med["lm_head_max"],
        "projections (q/k/v/out, cross q/out, fc1/fc2)": med["projections"] - one,
        "attention (cache writes, self + cross)": med["attention"] - one,
        "norms, residuals, embedding, positions": med["norms_embed"] - one,
        "per-call overhead (dispatch, ~200 args, ids/token copies)": med["call_all_args"],
        "  of which the weight arguments": med["call_all_args"] - one,
        "  (weight arguments converted on every call, unbound)": med["call_all_args_unbound"] - one,
    }
    if "step_no_collectives" in med:
        kinds["collectives (all-reduce)"] = step - med["step_no_collectives"]
    total = sum(v for k, v in kinds.items() if not k.startswith("  "))
    print(f"\n{args.shape}, batch {args.batch_size}, tp {args.tp}, bucket {args.bucket}, source {args.src_len}, "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'part':60s} {'ms p50':>8s} {'ms p10':>8s} {'share':>7s}")
    for name in times:
        print(f"{name:60s} {med[name]:8.2f} {np.percentile(times[name], 10):8.2f} {med[name] / step:7.1%}")
    print("-- kinds of work (each part's time less one bare call's, except the overhead itself):")
    for kind, ms in kinds.items():
        print(f"{kind:60s} {ms:8.2f} {'':8s} {ms / step:7.1%}")
    print(f"{'sum of the kinds':60s} {total:8.2f} {'':8s} {total / step:7.1%}")
    print(f"{'host loop (next_tokens - step)':60s} {med['next_tokens'] - step:8.2f}")
    _, checkpoint = bench_shapes.checkpoint_of(args)
    record = {**checkpoint, "batch_size": args.batch_size, "tp_degree": args.tp, "bucket": args.bucket,
              "src_len": args.src_len, "rounds": args.rounds, "load_average": os.getloadavg()[0],
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "ms_p50": med,
              "ms_p10": {n: float(np.percentile(v, 10)) for n, v in times.items()},
              "kinds_ms": kinds, "sum_of_kinds_ms": total, "first_call_s": compile_s}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
