"""`bonn-serve info M.bonn`: what a packed model is, what it costs to run, and how the engine will run it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="path to a .bonn file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--threads", type=int, default=None, help="engine threads to report (default: all cores)")


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n:,} B"
    value, unit = float(n), "B"
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.2f} {unit} ({n:,} B)"


def render(info: dict[str, Any]) -> str:
    inp = info["input"]
    prov = info.get("provenance") or {}
    acc = prov.get("accuracy")
    lines = [
        f"model        {info['name']}  (arch {info['arch']}, {info.get('task') or '-'})",
        f"file         {info['source']}",
        f"sha256       {info['sha256']}",
        f"format       .bonn {'.'.join(str(v) for v in info.get('format_version') or [])}",
        f"file size    {format_bytes(info['file_bytes'])}",
        f"weights      {format_bytes(info['weight_bytes'])}",
        f"classes      {info['classes']}: {', '.join(info['class_names_preview'])}"
        + (", ..." if info["classes"] > len(info["class_names_preview"]) else ""),
        f"input        {inp['layout']} {inp['channels']}x{inp['height']}x{inp['width']} {inp.get('color', '')}; "
        f"resize {inp['resize']}, crop {inp['crop']}, scale {inp['scale']:.6g}, mean {inp['mean']}, std {inp['std']}",
        f"ops          {info['ops']}: " + ", ".join(f"{k} x{v}" for k, v in info["op_kinds"].items()),
        f"work/image   {info['binary_macs'] / 1e9:.3f} G binary MACs + {info['float_macs'] / 1e6:.1f} M float MACs",
        f"engine       popcount path {info['popcount_path']}, float ISA {info['float_isa']}, "
        f"{info['threads']} thread(s), {info['fused_packs']} binary layers get fused input packing",
    ]
    if acc:
        lines.append("accuracy     " + ", ".join(f"{k} {100 * v:.2f}%" if isinstance(v, (int, float)) else f"{k} {v}"
                                              for k, v in acc.items()))
    card_acc = (info.get("card") or {}).get("accuracy") or {}
    if isinstance(card_acc.get("test_top1"), (int, float)):
        lines.append(f"card         test top-1 {100 * card_acc['test_top1']:.2f}% on {card_acc.get('n', '?')} images "
                     f"({card_acc.get('measured_with', '?')}), from {info['card']['path']}")
    for key in ("created", "exporter", "epochs", "epoch"):
        if key in prov:
            lines.append(f"{key:<12} {prov[key]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import sys

    from bonn_serve.engine import Engine
    from bonn_serve.format import BonnFormatError

    try:
        engine = Engine.load(args.model, threads=args.threads)
    except (BonnFormatError, ValueError) as e:
        print(f"bonn-serve info: {e}", file=sys.stderr)
        return 1
    info = engine.info
    from bonn_serve.registry import RegistryError, card_path_for, load_card

    try:  # the model card next to the file, if it describes this very file (its sha256)
        card = load_card(Path(args.model))
    except RegistryError:
        card = {}
    if card and card.get("sha256") == info["sha256"]:
        info["card"] = {"path": str(card_path_for(Path(args.model))), "accuracy": card.get("accuracy")}
    print(json.dumps(info, indent=1, default=str) if args.json else render(info))
    return 0
