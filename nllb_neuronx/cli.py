"""The `nllb-neuronx` command line.

    nllb-neuronx translate --model DIR --src eng_Latn --tgt fra_Latn [-i FILE] [-o FILE] [--beams N] [--tp N]
    nllb-neuronx compile --model DIR --out ARTIFACTS [shape options]
    nllb-neuronx info [--model DIR]
    nllb-neuronx demo [--tp N]

Exit codes: 0 success; 1 a failed check (demo); 2 bad usage or input (unknown language, invalid UTF-8, a line too
long, a missing model), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


class InputError(Exception):
    """Bad input from the user: reported on stderr, exit code 2."""


def _shape_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF checkpoint directory (or hub id)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--amp", default="f32", choices=["f32", "bf16", "f16"])
    parser.add_argument("--n-positions", default="64,128,256", help="decoder buckets, comma-separated")
    parser.add_argument("--encoder-buckets", default="32,64,128,256", help="source buckets, comma-separated")
    parser.add_argument("--backend", default=None, choices=["xla-cpu", "xla-gpu", "neuron"])
    parser.add_argument("--compiled-dir", default=None, help="compiled artifacts to load (see `compile`)")


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{name} must be comma-separated integers, got {text!r}") from None


def _model_kwargs(args) -> dict:
    return dict(batch_size=args.batch_size, tp_degree=args.tp, amp=args.amp, backend=args.backend,
                n_positions=_ints(args.n_positions, "--n-positions"),
                encoder_buckets=_ints(args.encoder_buckets, "--encoder-buckets"),
                compiled_dir=args.compiled_dir)


def _read_lines(stream) -> list[str]:
    """Lines of a binary stream as text; invalid UTF-8 is an input error naming the line."""
    lines = []
    for number, raw in enumerate(stream, start=1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError as e:
            raise InputError(f"line {number} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    return lines


def _translate(args) -> int:
    if args.ray:  # Ray Data: one replica per actor (nllb_neuronx/ray.py)
        from nllb_neuronx.ray import run_cli
        return run_cli(args, _model_kwargs(args))
    if args.input_format != "text":
        raise InputError(f"--input-format {args.input_format} needs --ray in this version")
    from tqdm import tqdm

    from nllb_neuronx.translator import TextError, Translator

    source = open(args.input, "rb") if args.input else sys.stdin.buffer
    with source:
        lines = _read_lines(source)
    translator = Translator.from_pretrained(args.model, **_model_kwargs(args))
    kwargs = dict(num_beams=args.beams, split_long=args.split_long,
                  max_new_tokens=args.max_new_tokens)
    translator.language_id(args.src), translator.language_id(args.tgt)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    block = max(1, args.batch_size // args.beams) * 4  # stream: translate and write a few batches at a time
    progress = tqdm(total=len(lines), unit="line", disable=not sys.stderr.isatty(), file=sys.stderr)
    try:
        for start in range(0, len(lines), block):
            chunk = lines[start: start + block]
            try:
                done = translator.translate(chunk, args.src, args.tgt, **kwargs)
            except TextError as e:  # name the line in the whole input, not in the block
                raise InputError(f"line {start + e.index + 1} {e.detail}") from None
            out.write("".join(t + "\n" for t in done))
            out.flush()
            progress.update(len(chunk))
    finally:
        progress.close()
        if out is not sys.stdout:
            out.close()
    return EXIT_OK


def _compile(args) -> int:
    import time

    from nllb_neuronx import NLLBForSampling

    kwargs = _model_kwargs(args)
    kwargs["compiled_dir"] = args.out
    start = time.perf_counter()
    model = NLLBForSampling.from_pretrained(args.model, **kwargs).to_neuron()
    model.save(args.out)
    print(f"compiled {len(model.program_builders())} programs ({model.runtime.compile_count} new) into {args.out} "
          f"in {time.perf_counter() - start:.1f}s")
    return EXIT_OK


def _info(args) -> int:
    import platform

    import jax

    from hlo.runtime import xla_platforms
    from hlo.runtime.neuron_platform import probe
    from nllb_neuronx import __version__

    print(f"nllb_neuronx {__version__}, jax {jax.__version__}, python {platform.python_version()}")
    print(f"XLA platforms: {', '.join(xla_platforms())}")
    found = probe()
    jax_neuron = None
    if found.pjrt_plugin is not None:
        from hlo.runtime.neuron import jax_neuron_devices
        jax_neuron = len(jax_neuron_devices())
    for line in found.report(jax_neuron):
        print(line)
    if args.model:
        from nllb_neuronx.config import ModelConfig
        from nllb_neuronx.weights import read_config, resolve_path

        config = ModelConfig.from_hf(read_config(resolve_path(args.model)))
        print(f"model: d_model {config.d_model}, layers {config.encoder_layers}+{config.decoder_layers}, "
              f"heads {config.heads}, vocab {config.vocab_size}")
    if getattr(args, "compiled_dir", None):
        import json
        from pathlib import Path

        manifest = json.loads((Path(args.compiled_dir) / "manifest.json").read_text())
        print(f"compiled artifacts: {len(manifest['programs'])} programs, {manifest['compile']}, "
              f"backend {manifest['backend']}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nllb-neuronx", description="NLLB-200 / M2M100 as HLO programs.")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("translate", help="translate lines of text, one output line per input line")
    _shape_options(tr)
    tr.add_argument("--src", required=True, help="source language code, e.g. eng_Latn")
    tr.add_argument("--tgt", required=True, help="target language code, e.g. fra_Latn")
    tr.add_argument("-i", "--input", help="input file (default: stdin)")
    tr.add_argument("-o", "--output", help="output file (default: stdout)")
    tr.add_argument("--beams", type=int, default=1)
    tr.add_argument("--max-new-tokens", type=int, default=None)
    tr.add_argument("--split-long", action="store_true", help="split lines too long for the encoder into sentences")
    # Ray Data (nllb_neuronx/ray.py)
    tr.add_argument("--input-format", default="text", choices=["text", "jsonl"],
                    help='jsonl: {"text": ..., "tgt_lang": ...} per line; output jsonl with "translation" added')
    tr.add_argument("--ray", action="store_true", help="translate on a Ray cluster, one model replica per actor; "
                                                       "-i may be a directory (then -o names an output directory)")
    tr.add_argument("--replicas", type=int, default=1, help="with --ray: model replicas (Ray actors)")
    tr.add_argument("--ray-address", default=None, help="with --ray: a Ray cluster's address (default: a local one)")
    co = sub.add_parser("compile", help="compile every program for every bucket and save them")
    _shape_options(co)
    co.add_argument("--out", required=True, help="artifacts directory")
    info = sub.add_parser("info", help="backends, devices and versions found")
    info.add_argument("--model", default=None)
    info.add_argument("--compiled-dir", default=None)
    sub.add_parser("demo", help="random NLLB-shaped model: compile, generate, check against HF (no download)",
                   add_help=False)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from nllb_neuronx.demo import main as demo
        return demo(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    handlers = {"translate": _translate, "compile": _compile, "info": _info}
    try:
        return handlers[args.command](args)
    except (InputError, ValueError, FileNotFoundError) as e:
        print(f"nllb-neuronx {args.command}: error: {e}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
