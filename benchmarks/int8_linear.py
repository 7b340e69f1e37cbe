"""Time one features-first linear W [out, in] @ x [in, C] in each int8 form against f32, on XLA CPU (no jax: our own
hlo Program API), to choose the form a backend's int8 programs use (`hlo/quant.py`).

    python benchmarks/int8_linear.py [--shapes 1024x4096,256206x1024] [--batches 1,8] [--calls 20]

Forms: f32 (the weight in f32, `nn.linear_columns`); dequant_dot (transformers-neuronx's: s8 weight converted to f32
before the dot, the scale after it); dequant_bf16 (the s8 weight converted to bf16, x to bf16, the dot into f32);
int8_dot (CTranslate2's: x quantized per column on the fly, s8 x s8 -> s32 dot, both scales after it; one column
padded to two); int8_dot_unpadded (the same without that padding); int8_dot_rows (the same, rows first: x_q [C, in] . W_q[out, in] -> [C, out], the layout YNNPACK packs W in).
Prints one JSON line per (shape, batch, form): ms p50 / p10 over `--calls` calls after 2 warm-up calls.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import hlo
from hlo import nn, quant
from hlo.types import bf16, f32, s8, s32


def build(form: str, out: int, inp: int, cols: int) -> hlo.Module:
    wdt = f32 if form == "f32" else s8
    spec = hlo.ParamSpec(w=wdt[out, inp], scale=f32[out], x=f32[inp, cols])

    def body(p):
        if form == "f32":
            return {"y": nn.linear_columns(p.x, p.w) * hlo.broadcast_in_dim(p.scale, [out, cols], [0])}
        if form == "dequant_dot":
            return {"y": quant.dequant_dot(p.w, p.scale, p.x)}
        if form == "dequant_bf16":
            y = hlo.dot_general(hlo.convert(p.w, bf16), hlo.convert(p.x, bf16), ([1], [0]),
                                preferred_element_type=f32)
            return {"y": y * hlo.broadcast_in_dim(p.scale, y.dims, [0])}
        if form == "int8_dot":
            return {"y": quant.int8_dot(p.w, p.scale, p.x)}
        if form == "int8_dot_rows":
            x_q, x_scale = quant.quantize_columns(p.x)
            acc = hlo.dot_general(hlo.transpose(x_q, [1, 0]), p.w, ([1], [1]), preferred_element_type=s32)  # [C, out]
            y = hlo.convert(acc, f32) * hlo.broadcast_in_dim(p.scale, acc.dims, [1])
            return {"y": y * hlo.broadcast_in_dim(x_scale, acc.dims, [0])}
        if form == "int8_dot_unpadded":  # int8_dot without padding one column to two (the matrix-vector path)
            x_q, x_scale = quant.quantize_columns(p.x)
            acc = hlo.dot_general(p.w, x_q, ([1], [0]), preferred_element_type=s32)                  # [out, C]
            y = hlo.convert(acc, f32) * hlo.broadcast_in_dim(p.scale, acc.dims, [0])
            return {"y": y * hlo.broadcast_in_dim(x_scale, acc.dims, [1])}
        raise ValueError(form)

    return hlo.build(f"linear_{form}_{out}x{inp}_c{cols}", spec, body)


FORMS = ("f32", "dequant_dot", "dequant_bf16", "int8_dot", "int8_dot_unpadded", "int8_dot_rows")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1024x4096,256206x1024", help="OUTxIN of each weight")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)

    from hlo.runtime import get_runtime
    runtime = get_runtime("xla-cpu", 1)
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        out, inp = (int(v) for v in shape.split("x"))
        w32 = rng.standard_normal((out, inp), dtype=np.float32) * 0.05
        scale = (np.abs(w32).max(axis=1) / 127).astype(np.float32)
        wq = np.clip(np.round(w32 / scale[:, None]), -128, 127).astype(np.int8)
        weights = {"f32": runtime.put(w32), "s8": runtime.put(wq)}
        del w32
        scale_t = runtime.put(scale)
        for cols in (int(b) for b in args.batches.split(",")):
            x = runtime.put(rng.standard_normal((inp, cols), dtype=np.float32))
            for form in args.forms.split(","):
                program = runtime.compile(build(form, out, inp, cols))
                w = weights["f32" if form == "f32" else "s8"]
                times = []
                for i in range(args.calls + 2):
                    start = time.perf_counter()
                    y = program(w=w, scale=scale_t, x=x)["y"]
                    y.array.block_until_ready()
                    times.append((time.perf_counter() - start) * 1e3)
                times = np.array(times[2:])
                print(json.dumps({"weight": shape, "batch": cols, "form": form,
                                  "ms_p50": round(float(np.median(times)), 3),
                                  "ms_p10": round(float(np.percentile(times, 10)), 3)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
