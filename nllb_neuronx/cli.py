"""The `nllb-neuronx` command line. Exit codes: 0 success, 1 failed check, 2 usage or input error."""

from __future__ import annotations

import argparse
import sys


def _info(args) -> int:
    import platform

    import jax

    from hlo.runtime import neuron_available, xla_platforms
    from nllb_neuronx import __version__

    print(f"nllb_neuronx {__version__}, jax {jax.__version__}, python {platform.python_version()}")
    print(f"XLA platforms: {', '.join(xla_platforms())}")
    print(f"Neuron devices and neuronx-cc: {'found' if neuron_available() else 'not found'}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nllb-neuronx", description="NLLB-200 / M2M100 as HLO programs.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="random NLLB-shaped model: compile, generate, check against HF (no download)",
                   add_help=False)
    sub.add_parser("info", help="backends, devices and versions found")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from nllb_neuronx.demo import main as demo
        return demo(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return _info(args)


if __name__ == "__main__":
    sys.exit(main())
