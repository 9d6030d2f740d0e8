"""`python -m inna_fused <command>`: info, bench, toy, train.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
this file only dispatches (modules are imported lazily so `info` stays fast).
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "info": ("inna_fused.cli.info", "versions, compiled kernels, SIMD level, threads"),
    "bench": ("inna_fused.cli.bench", "benchmark INNA against torch's fused optimizers"),
    "toy": ("inna_fused.experiments.toy", "the paper's non-smooth 2-D toy problem (Fig. 1)"),
    "train": ("inna_fused.experiments.train", "INNA vs SGD/Adam/Adagrad on a small CNN (Fig. 3)"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inna_fused", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # command not shipped in this build
        modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    if args.command not in modules:
        parser.error(f"command {args.command!r} is not available")
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
