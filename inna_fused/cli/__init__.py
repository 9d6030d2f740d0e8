"""`python -m inna_fused <command>` (also the `inna-fused` script): the dispatcher.

Each command is a module with `add_arguments(parser)` and `run(args) -> int`. Only the module of
the command being run is imported, so `info` does not load the benchmark harness, and
`import inna_fused` loads none of them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "info": ("inna_fused.cli.info", "versions, compiled kernels, SIMD level, threads"),
    "bench": ("inna_fused.bench.command", "benchmark INNA and INNAprop against torch's fused optimizers"),
    "toy": ("inna_fused.experiments.toy", "the paper's non-smooth 2-D toy problem (Fig. 1)"),
    "train": ("inna_fused.experiments.train", "INNA vs SGD/Adam/Adagrad on a small CNN (Fig. 3)"),
    "charlm": ("inna_fused.experiments.charlm", "INNAprop vs AdamW vs INNA on a byte-level GPT"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m inna_fused",
                                     description="inna_fused: " + ", ".join(COMMANDS))
    sub = parser.add_subparsers(dest="command", required=True)
    # The top-level parser has no options but -h, so the first other word names the command.
    chosen = next((word for word in argv if not word.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        if name != chosen:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # command not shipped in this build
        module.add_arguments(command_parser)
    args = parser.parse_args(argv)
    if module is None:
        parser.error(f"command {args.command!r} is not available")
    return int(module.run(args) or 0)
