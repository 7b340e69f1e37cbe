"""Neuron projections from the exported HLO: what one decode step reads per rank, and its collectives.

    python benchmarks/neuron_projection.py --shapes nllb-200-distilled-600M,nllb-200-1.3B,nllb-200-3.3B \\
        --tp 1,2,8 --amp f32,bf16 --cache-len 128 --src-len 128 --json benchmarks/out/neuron_projection.json

For each shape x tp x amp the greedy one-token decode step is exported exactly as `nllb-neuronx export-hlo` writes
its programs (from the config alone: no checkpoint, no weights), then its `.hlo.pb` is read back and counted
with `hlo.analysis` (nothing here is a formula of the architecture):
- weight bytes read per rank: the manifest's "weight" parameters, as much of each as the step reads (the whole LM head
  and projections; only the looked-up rows of the positions table);
- KV bytes read per rank: the self-attention caches (the parameters updated in place) at --cache-len positions, and
  the encoder's cross-attention K/V at --src-len;
- collectives per step: each all-reduce / all-gather with its operand bytes.
The projected ms per decode step is those bytes over one NeuronCore's share of its device's HBM bandwidth (AWS's
published device figures split evenly over the device's cores). No collective time is added: no published latency or
bandwidth figure for small in-instance collectives was found, so collectives are listed, not converted.
These are projections from bytes, not measurements: no Neuron device was used.
`--from DIR[,DIR]` projects exports made earlier (`nllb-neuronx export-hlo --model M --out DIR ...`) instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import shapes  # noqa: E402

from hlo import analysis  # noqa: E402

# One NeuronCore's share of its device's HBM bandwidth (GB/s): the device figure over its NeuronCores.
HBM_GBS_PER_CORE = {
    # Trainium and Inferentia2 devices: 2 NeuronCore-v2, 2 HBM stacks, 820 GB/s ("Trainium/Inferentia2
    # Architecture Guide for NKI", awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/arch/
    # trainium_inferentia2_arch.html; the Trainium page gives "820 GiB/sec")
    "trn1/inf2": 820 / 2,
    # Trainium2 device: 8 NeuronCore-v3, 4 HBM stacks, 2.9 TB/s ("Trainium2 Architecture Guide for NKI",
    # .../en/latest/nki/arch/trainium2_arch.html); a logical core of LNC=2 holds two of these shares
    "trn2": 2900 / 8,
}
PUBLISHED_T5_3B = {
    "model": "t5-3b", "instance": "trn1.32xlarge", "tp": 8, "batch": 1, "ms_per_token_p50": 9.07,
    "tokens_per_s": 110.23, "input_tokens": 128, "output_tokens": 84, "sdk": "2.18.0, real time",
    "precision": "FP32 model, Matmult-BF16 autocast",
    "note": "AWS counts input and output tokens: 9.07 ms x (128 + 84) = 1923 ms per request, at most 22.9 ms per "
            "generated token (encoder included)",
    "source": "Neuron SDK trn1 performance page, latency_data_encoder_decoder.csv (NEURON-FACTS.md section 7)",
}


def model_for(shape: str, tp: int, batch: int, cache_len: int, src_len: int, amp: str):
    """A model of `shape` without weights, compiled for one target bucket and one source bucket."""
    from nllb_neuronx import NLLBForSampling
    from nllb_neuronx.config import CompileConfig, ModelConfig

    config = ModelConfig.from_hf({**shapes.SHAPES[shape], "model_type": "m2m_100"})
    compile_config = CompileConfig(batch_size=batch, tp_degree=tp, n_positions=(cache_len,),
                                   encoder_buckets=(src_len,), amp=amp)
    return NLLBForSampling(None, config, compile_config)


def is_decode_step(key) -> bool:
    return key.kind == "decoder" and key.head == "greedy" and key.new_tokens == 1


def export(shape: str, tp: int, batch: int, cache_len: int, src_len: int, amp: str, directory: Path) -> Path:
    """The greedy one-token decode step written as `nllb-neuronx export-hlo` writes every program (the .hlo.pb,
    .hlo.txt and manifest of that one program); returns the directory."""
    from nllb_neuronx.export import export_hlo

    export_hlo(model_for(shape, tp, batch, cache_len, src_len, amp), directory, select=is_decode_step)
    return directory


def decode_step_entry(manifest: dict) -> dict:
    """The greedy one-token decoder program of the largest target and source buckets."""
    steps = [p for p in manifest["programs"] if p["key"].get("kind") == "decoder"
             and p["key"].get("head") == "greedy" and p["key"].get("new_tokens") == 1]
    if not steps:
        raise ValueError("the export holds no greedy one-token decoder program")
    return max(steps, key=lambda p: (p["key"]["target_len"], p["key"]["source_len"]))


def project(directory: Path) -> dict:
    """Per-rank bytes and collectives of the export's decode step, and the projected ms per step."""
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    entry = decode_step_entry(manifest)
    traffic = analysis.analyze_file(directory / entry["hlo_pb"])
    reads = {p.name: p for p in traffic.parameters}
    groups = {"weights": set(), "self_kv": set(), "cross_kv": set(), "other_inputs": set()}
    for p in entry["parameters"]:
        if p["kind"] == "weight":
            groups["weights"].add(p["name"])
        elif p["updated_by_output"]:
            groups["self_kv"].add(p["name"])
        elif p["name"].startswith("cross_"):
            groups["cross_kv"].add(p["name"])
        else:
            groups["other_inputs"].add(p["name"])
    if set(reads) != {p["name"] for p in entry["parameters"]}:
        raise ValueError(f"{entry['hlo_pb']}: its parameters differ from the manifest's")
    read = {group: traffic.read_bytes(names) for group, names in groups.items()}
    step = sum(read.values())
    compile_ = manifest["compile"]
    return {
        "program": entry["name"], "shape_model": manifest["model"], "tp": compile_["tp_degree"],
        "batch_size": compile_["batch_size"], "amp": compile_["amp"], "cache_len": entry["key"]["target_len"],
        "src_len": entry["key"]["source_len"],
        "weight_param_bytes": sum(reads[n].nbytes for n in groups["weights"]),
        "weight_read_bytes": read["weights"], "self_kv_read_bytes": read["self_kv"],
        "cross_kv_read_bytes": read["cross_kv"], "other_input_read_bytes": read["other_inputs"],
        "kv_written_bytes": sum(reads[n].written_bytes for n in groups["self_kv"]),
        "step_read_bytes": step,
        "collective_counts": traffic.collective_counts(), "collective_operand_bytes": traffic.collective_bytes(),
        "projected_ms_per_step": {device: step / (gbs * 1e9) * 1e3 for device, gbs in HBM_GBS_PER_CORE.items()},
    }


def markdown(rows: list[dict]) -> str:
    head = ("| shape | amp | tp | weights read MB/rank | KV read MB/rank (self + cross) | step MB/rank | all-reduce "
            "(n, KB) | all-gather (n, KB) | trn1/inf2 ms/step | trn2 ms/step |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c, b = r["collective_counts"], r["collective_operand_bytes"]
        lines.append(
            f"| {r['shape']} | {r['amp']} | {r['tp']} | {r['weight_read_bytes'] / 1e6:.1f} | "
            f"{(r['self_kv_read_bytes'] + r['cross_kv_read_bytes']) / 1e6:.2f} | {r['step_read_bytes'] / 1e6:.1f} | "
            f"{c.get('all-reduce', 0)}, {b.get('all-reduce', 0) / 1e3:.1f} | "
            f"{c.get('all-gather', 0)}, {b.get('all-gather', 0) / 1e3:.2f} | "
            f"{r['projected_ms_per_step']['trn1/inf2']:.2f} | {r['projected_ms_per_step']['trn2']:.2f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="nllb-200-distilled-600M,nllb-200-1.3B,nllb-200-3.3B")
    p.add_argument("--tp", default="1,2,8")
    p.add_argument("--amp", default="f32,bf16")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--cache-len", type=int, default=128, help="target positions the self-attention cache holds")
    p.add_argument("--src-len", type=int, default=128, help="source positions of the cross-attention K/V")
    p.add_argument("--export-dir", help="keep the exports here (one folder per shape, tp, amp); default: a temp dir")
    p.add_argument("--from", dest="from_dirs", help="comma-separated export folders to project instead")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in args.shapes if s not in shapes.SHAPES]
    if unknown:
        p.error(f"unknown shapes {unknown}; choose from {', '.join(shapes.SHAPES)}")
    try:
        args.tp = [int(t) for t in args.tp.split(",")]
    except ValueError:
        p.error(f"--tp takes comma-separated integers, got {args.tp!r}")
    args.amp = [a.strip() for a in args.amp.split(",") if a.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    if args.from_dirs:
        for d in args.from_dirs.split(","):
            rows.append({"shape": Path(d).name, "export": d, **project(Path(d))})
    else:
        root = Path(args.export_dir) if args.export_dir else Path(tempfile.mkdtemp(prefix="nllb_neuron_hlo_"))
        for shape in args.shapes:
            for amp in args.amp:
                for tp in args.tp:
                    start = time.perf_counter()
                    folder = root / f"{shape}-{amp}-tp{tp}-b{args.batch_size}-t{args.cache_len}-s{args.src_len}"
                    try:
                        export(shape, tp, args.batch_size, args.cache_len, args.src_len, amp, folder)
                    except ValueError as e:
                        print(f"{shape} {amp} tp {tp}: {e}", file=sys.stderr)
                        return 2
                    rows.append({"shape": shape, "export": str(folder), **project(folder),
                                 "export_s": time.perf_counter() - start})
                    print(f"  {shape} {amp} tp {tp}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(markdown(rows))
    print(f"\nprojected ms/step = step bytes per rank / one NeuronCore's HBM share "
          f"({', '.join(f'{d} {g:.1f} GB/s' for d, g in HBM_GBS_PER_CORE.items())}); collectives not converted. "
          "Projections from bytes, not measurements on Neuron.")
    print(f"published: {PUBLISHED_T5_3B['model']} {PUBLISHED_T5_3B['instance']} tp {PUBLISHED_T5_3B['tp']}: "
          f"{PUBLISHED_T5_3B['ms_per_token_p50']} ms/token ({PUBLISHED_T5_3B['note']})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"hbm_gbs_per_core": HBM_GBS_PER_CORE, "published": PUBLISHED_T5_3B,
                                               "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
