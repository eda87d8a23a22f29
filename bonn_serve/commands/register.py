"""`bonn-serve register PATH`: put a .bonn model (and its FP ONNX baseline) into the BentoML model store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path", type=Path, help="a .bonn file (card: X.card.json next to it), or a directory of them"
    )
    p.add_argument(
        "--fp",
        type=Path,
        default=None,
        help="FP ONNX baseline (default: the card's fp_baseline, or fp-<arch>.onnx for a directory)",
    )
    p.add_argument("--name", default=None, help="registry name (default: card name, header name, file stem)")
    p.add_argument(
        "--fp-name", default=None, help="registry name of the baseline (default: card or file stem)"
    )


def run(args: argparse.Namespace) -> int:
    from bonn_serve import registry
    from bonn_serve.format import BonnFormatError

    home = registry.setup_environment()
    try:
        if args.path.is_dir():
            if args.fp or args.name or args.fp_name:
                raise registry.RegistryError(
                    "--fp/--name/--fp-name apply to a single .bonn file, not a directory"
                )
            results = registry.register_dir(args.path)
            if not results:
                raise registry.RegistryError(f"{args.path}: no .bonn models in this directory")
        else:
            results = registry.register(args.path, fp=args.fp, name=args.name, fp_name=args.fp_name)
    except (registry.RegistryError, BonnFormatError, OSError) as e:
        print(f"bonn-serve register: {e}", file=sys.stderr)
        return 1
    for entry, created in results:
        state = "registered" if created else "already registered"
        print(
            f"{state}: {entry.tag} ({entry.backend}, {entry.metadata.get('weight_bytes')} weight bytes, "
            f"sha256 {entry.metadata.get('sha256', '')[:12]}) in {home}"
        )
    return 0
