"""The `nllb-neuronx` command line.

    nllb-neuronx translate --model DIR --src eng_Latn --tgt fra_Latn [-i FILE] [-o FILE] [--beams N] [--tp N]
    nllb-neuronx translate --model DIR --src eng_Latn --input-format jsonl < rows.jsonl   # {"text", "tgt_lang"}
    nllb-neuronx compile --model DIR --out ARTIFACTS [shape options]
    nllb-neuronx export-hlo --model DIR --out DIR [shape options]
    nllb-neuronx info [--model DIR]
    nllb-neuronx demo [--tp N]
    nllb-neuronx serve --model DIR [--host 127.0.0.1] [--port 8000] [shape options] [--max-queue N]

Exit codes: 0 success; 1 a failed check (demo, export-hlo's Neuron check); 2 bad usage or input (unknown language,
invalid UTF-8, a line too long, malformed JSON, a bad number, a missing model), with the reason on stderr.
`translate` checks its options and language codes before it loads any weight, then streams the lines through the
Translator's slot engine, writing each line's translation as soon as it and the lines before it are done.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Iterator

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


class InputError(Exception):
    """Bad input from the user: reported on stderr, exit code 2."""


def _program_options(parser: argparse.ArgumentParser) -> None:
    """What decides the programs: the model and the compiled shape."""
    parser.add_argument("--model", required=True, help="HF checkpoint directory (or hub id)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--amp", default="f32", choices=["f32", "bf16", "f16"])
    parser.add_argument("--n-positions", default="64,128,256", help="decoder buckets, comma-separated")
    parser.add_argument("--encoder-buckets", default="32,64,128,256", help="source buckets, comma-separated")
    parser.add_argument("--quantize", default=None, choices=["s8"],
                        help="int8 weights with per-output-channel scales (QuantizationConfig; default: the amp dtype)")


def _shape_options(parser: argparse.ArgumentParser) -> None:
    _program_options(parser)
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
                compiled_dir=args.compiled_dir, quantization=args.quantize)


def _lines(stream) -> Iterator[tuple[int, str]]:
    """(line number, text) of a binary stream, as each line arrives; invalid UTF-8 is an input error naming it."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield number, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise InputError(f"line {number} is not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _jsonl_item(number: int, line: str, default_tgt: str | None, languages) -> tuple[dict | None, tuple[str, str]]:
    """One jsonl input line: the object and its (text, target language); an empty line stays an empty line (its
    target is any known code: nothing is translated)."""
    if not line.strip():
        return None, ("", default_tgt or languages.codes[0])
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise InputError(f"line {number} is not valid JSON: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise InputError(f"line {number}: expected an object with a string field \"text\", got {line[:80]!r}")
    tgt = obj.get("tgt_lang", default_tgt)
    if not isinstance(tgt, str):
        raise InputError(f"line {number}: no \"tgt_lang\" (a language code string) and no --tgt to default to")
    try:
        languages.id(tgt)
    except ValueError as e:
        raise InputError(f"line {number}: {e}") from None
    return obj, (obj["text"], tgt)


def _check_numbers(args) -> None:
    """Every number and bucket list, before anything loads: exit 2 with the reason, never a traceback."""
    from nllb_neuronx.config import CompileConfig

    for name, value in (("--beams", args.beams), ("--batch-size", args.batch_size), ("--tp", args.tp)):
        if value < 1:
            raise InputError(f"{name} must be a positive integer, got {value}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be a positive integer, got {args.max_new_tokens}")
    try:
        config = CompileConfig(**_model_kwargs(args))
    except ValueError as e:
        raise InputError(str(e).replace("n_positions", "--n-positions").replace("encoder_buckets",
                                                                                "--encoder-buckets")) from None
    if args.beams > args.batch_size:
        raise InputError(f"--beams {args.beams} exceeds --batch-size {args.batch_size}: rows x beams must fit a batch")
    if args.max_new_tokens is not None and args.max_new_tokens > config.max_target_length:
        raise InputError(f"--max-new-tokens {args.max_new_tokens} exceeds the largest --n-positions bucket "
                         f"{config.max_target_length}")


def _translate(args) -> int:
    from tqdm import tqdm

    from nllb_neuronx.translator import LanguageCodes, TextError, Translator

    _check_numbers(args)
    if args.ray:  # Ray Data: one replica per actor (nllb_neuronx/ray.py)
        from nllb_neuronx.ray import run_cli
        return run_cli(args, _model_kwargs(args))
    if args.input_format == "text" and not args.tgt:
        raise InputError("--tgt is required (with --input-format jsonl, each line may name its own tgt_lang)")
    tokenizer = _load_tokenizer(args.model)  # language codes come from the tokenizer: checked before any weight
    languages = LanguageCodes(tokenizer)
    for code in (args.src, args.tgt):
        if code is not None:
            languages.id(code)
    source = open(args.input, "rb") if args.input else sys.stdin.buffer
    translator = Translator.from_pretrained(args.model, tokenizer=tokenizer, **_model_kwargs(args))
    objects: list = []   # jsonl: each line's object, in order, for its output line

    def items():
        for number, line in _lines(source):
            if args.input_format == "jsonl":
                obj, item = _jsonl_item(number, line, args.tgt, languages)
                objects.append(obj)
                yield item
            else:
                yield line

    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    progress = tqdm(unit="line", disable=not sys.stderr.isatty(), file=sys.stderr)
    stream = translator.translate_stream(items(), args.src, args.tgt, num_beams=args.beams,
                                         split_long=args.split_long, max_new_tokens=args.max_new_tokens)
    try:
        for index, translation in enumerate(stream):
            if args.input_format == "jsonl":
                obj = objects[index]
                translation = "" if obj is None else json.dumps({**obj, "translation": translation},
                                                                ensure_ascii=False)
            out.write(translation + "\n")
            out.flush()
            progress.update(1)
    except TextError as e:  # name the line in the whole input
        raise InputError(f"line {e.index + 1} {e.detail}") from None
    finally:
        progress.close()
        translator.close()
        source.close()
        if out is not sys.stdout:
            out.close()
    return EXIT_OK


def _load_tokenizer(path):
    from transformers import AutoTokenizer

    from nllb_neuronx.weights import resolve_path

    directory = resolve_path(path)
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"could not load a tokenizer from {directory} (translate needs the checkpoint's "
                         f"tokenizer files): {e}") from None


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


def _export_hlo(args) -> int:
    from nllb_neuronx import NLLBForSampling
    from nllb_neuronx.export import MANIFEST, export_hlo

    model = NLLBForSampling.from_pretrained(   # built for neuron: int8 linears in transformers-neuronx's form
        args.model, batch_size=args.batch_size, tp_degree=args.tp, amp=args.amp, max_top_k=args.max_top_k,
        n_positions=_ints(args.n_positions, "--n-positions"), encoder_buckets=_ints(args.encoder_buckets,
                                                                                     "--encoder-buckets"),
        quantization=args.quantize, backend="neuron")
    result = export_hlo(model, args.out)
    print(f"wrote {len(result.programs)} programs (.hlo.pb, .hlo.txt) and {MANIFEST} into {args.out}")
    if not result.clean:
        print(f"nllb-neuronx export-hlo: the Neuron check failed:\n{result.report()}", file=sys.stderr)
        return EXIT_FAILED
    print("Neuron check: clean")
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


def _serve(args) -> int:
    from nllb_neuronx.serve.server import serve

    if args.ray:
        from nllb_neuronx.serve.ray_serve import serve_with_ray
        serve_with_ray(_serve_options(args), replicas=args.replicas)
        return EXIT_OK
    serve(_serve_options(args))
    return EXIT_OK


def _serve_options(args):
    from nllb_neuronx.serve.server import ServeOptions

    return ServeOptions(model=args.model, model_kwargs=_model_kwargs(args), host=args.host, port=args.port,
                        max_queue=args.max_queue, request_timeout_s=args.request_timeout,
                        continuous_batching=not args.no_continuous_batching, warmup=args.warmup)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nllb-neuronx", description="NLLB-200 / M2M100 as HLO programs.")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("translate", help="translate lines of text, one output line per input line")
    _shape_options(tr)
    tr.add_argument("--src", required=True, help="source language code, e.g. eng_Latn")
    tr.add_argument("--tgt", default=None,
                    help="target language code, e.g. fra_Latn (jsonl: the default for lines without tgt_lang)")
    tr.add_argument("-i", "--input", help="input file (default: stdin)")
    tr.add_argument("-o", "--output", help="output file (default: stdout)")
    tr.add_argument("--beams", type=int, default=1)
    tr.add_argument("--max-new-tokens", type=int, default=None)
    tr.add_argument("--split-long", action="store_true", help="split lines too long for the encoder into sentences")
    tr.add_argument("--input-format", choices=["text", "jsonl"], default="text",
                    help='jsonl: {"text": ..., "tgt_lang": ...} per line; each output line is the object with '
                         '"translation" added')
    tr.add_argument("--ray", action="store_true", help="translate on a Ray cluster, one model replica per actor; "
                                                       "-i may be a directory (then -o names an output directory)")
    tr.add_argument("--replicas", type=int, default=1, help="with --ray: model replicas (Ray actors)")
    tr.add_argument("--ray-address", default=None, help="with --ray: a Ray cluster's address (default: a local one)")
    co = sub.add_parser("compile", help="compile every program for every bucket and save them")
    _shape_options(co)
    co.add_argument("--out", required=True, help="artifacts directory")
    ex = sub.add_parser("export-hlo", help="write every program's HLO (.hlo.pb, .hlo.txt) and a manifest; check "
                                           "them for Neuron (exit 1 listing violations)")
    _program_options(ex)                                            # no weight is read
    ex.add_argument("--out", required=True, help="directory to write into")
    ex.add_argument("--max-top-k", type=int, default=256, help="sampling draws among this many most likely tokens")
    info = sub.add_parser("info", help="backends, devices and versions found")
    info.add_argument("--model", default=None)
    info.add_argument("--compiled-dir", default=None)
    se = sub.add_parser("serve", help="HTTP translation service (LibreTranslate-compatible /translate, /v1/translate)")
    _shape_options(se)
    se.add_argument("--host", default="127.0.0.1")
    se.add_argument("--port", type=int, default=8000)
    se.add_argument("--max-queue", type=int, default=256,
                    help="lines waiting for a batch slot before requests get 503 (also the most lines per request)")
    se.add_argument("--request-timeout", type=float, default=60.0, help="seconds before a request gets 504")
    se.add_argument("--no-continuous-batching", action="store_true", help="one lockstep batch at a time")
    se.add_argument("--warmup", default="compile", choices=["compile", "request"],
                    help="before ready: compile every program (default), or only what one short request needs")
    se.add_argument("--ray", action="store_true", help="serve through Ray Serve (extra `ray`)")
    se.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")
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
    handlers = {"translate": _translate, "compile": _compile, "info": _info, "export-hlo": _export_hlo,
                "serve": _serve}
    try:
        return handlers[args.command](args)
    except (InputError, ValueError, FileNotFoundError) as e:
        print(f"nllb-neuronx {args.command}: error: {e}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
