#!/usr/bin/env python3
"""Time trained model files against each other: .bonn through the XNOR engine, .onnx through onnxruntime.

`bonn-serve bench` compares the engine with onnxruntime on one architecture (random weights); this answers the
user's question "which shipped file do I serve?", across architectures, e.g. the wide BONN against the 16-wide
FP model:

    python scripts/bench_files.py models/wide/bonn-wrn22-64.bonn models/fp-wrn22-16.onnx --batches 1,8

The backends run interleaved (`bonn_serve.bench.time_interleaved`: one call of each in turn), so load on the
machine hits all of them alike; medians over --runs calls after a warm-up. Random inputs: speed does not
depend on them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bonn_serve.backends import load_bonn, load_onnx  # the service's own loaders: same threads and options
from bonn_serve.bench import time_interleaved  # `bonn-serve bench`'s interleaved timer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", type=Path, help=".bonn and/or .onnx files (32x32 RGB inputs)")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=300, help="timed calls per model and batch size")
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args(argv)
    # named by file name; by the path as given when two files share a name (else one would silently replace the other)
    names = [m.name for m in args.models]
    keys = [str(m) if names.count(m.name) > 1 else m.name for m in args.models]
    if len(set(map(str, args.models))) != len(args.models):
        p.error("a model file is given twice")
    models = {k: (load_bonn if m.suffix == ".bonn" else load_onnx)(m, args.threads)[0] for k, m in zip(keys, args.models)}
    width = max(map(len, models))
    for batch in (int(b) for b in args.batches.split(",")):
        x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        times = time_interleaved({name: (lambda f=fn: f(x)) for name, fn in models.items()}, args.runs, args.warmup)
        first = times[next(iter(models))]["median_ms"]
        for name, t in times.items():
            print(f"batch {batch:3d} threads {args.threads}  {name:<{width}}  {t['median_ms']:8.3f} ms  "
                  f"(x{t['median_ms'] / first:.2f} of the first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
