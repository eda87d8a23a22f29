"""`bonn-serve models`: list the models in the BentoML store that bonn-serve can serve."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="every version, not only the latest of each name")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from bonn_serve import registry

    home = registry.setup_environment()
    entries = registry.list_models(all_versions=args.all)
    if args.json:
        print(json.dumps([e.summary() for e in entries], indent=1))
        return 0
    if not entries:
        print(f"no bonn-serve models in {home}; add one with `bonn-serve register MODEL.bonn`")
        return 0
    rows = [("TAG", "BACKEND", "ARCH", "ACCURACY", "WEIGHT BYTES", "BASELINE")]
    for e in entries:
        s = e.summary()
        acc = "-" if s["accuracy"] is None else f"{100 * s['accuracy']:.2f}%"
        rows.append(
            (
                e.tag,
                e.backend,
                s["arch"] or "-",
                acc,
                f"{s['weight_bytes']:,}",
                s["baseline"] or (f"(baseline of {s['baseline_of']})" if s["baseline_of"] else "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"store: {home}")
    return 0
