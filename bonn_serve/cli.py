"""`bonn-serve` command line. Each subcommand lives in its own module with `add_arguments(parser)` and
`run(args) -> int`; heavy imports (torch, bentoml, onnxruntime) happen inside `run`, so `--help` is instant
and the serving commands never import torch."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules under training/ need the `train` extra (torch).
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("training.cli_export", "export a torch model (checkpoint or random) to .bonn and ONNX"),
    "train": ("training.cli_train", "train a BONN / baseline from a YAML config"),
    "eval": ("bonn_serve.commands.eval", "evaluate a .bonn model through the engine on a dataset split"),
    "info": ("bonn_serve.commands.info", "describe a .bonn file"),
    "bench": ("bonn_serve.commands.bench", "benchmark the engine against onnxruntime FP32 and INT8"),
    "register": ("bonn_serve.commands.register", "put a .bonn model (and its FP baseline) in the BentoML store"),
    "models": ("bonn_serve.commands.models", "list registered models"),
    "serve": ("bonn_serve.commands.serve", "serve the registered models over HTTP (BentoML)"),
    "loadtest": ("bonn_serve.commands.loadtest", "run the Locust load test against a local server"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonn-serve", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen not in COMMANDS:
        chosen = None
    try:
        args = build_parser(chosen).parse_args(argv)
    except ModuleNotFoundError as e:  # e.g. `train` without the train extra
        print(f"bonn-serve {chosen}: missing dependency {e.name!r}; install with pip install '.[train]'",
              file=sys.stderr)
        return 2
    if args.command is None:
        build_parser().print_help()
        return 2
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
