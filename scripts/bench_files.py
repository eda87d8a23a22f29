#!/usr/bin/env python3
"""Time trained model files against each other: .bonn through the XNOR engine, .onnx through onnxruntime.

`bonn-serve bench` compares the engine with onnxruntime on one architecture (random weights); this answers the
user's question "which shipped file do I serve?", across architectures, e.g. the wide BONN against the 16-wide
FP model:

    python scripts/bench_files.py models/wide/bonn-wrn22-64.bonn models/fp-wrn22-16.onnx --batches 1,8

The backends run interleaved (one call of each in turn), so load on the machine hits all of them alike;
medians over --runs calls after a warm-up. Random inputs: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def load(path: Path, threads: int):
    """A callable x -> logits for one model file."""
    if path.suffix == ".bonn":
        from bonn_serve import Engine

        engine = Engine.load(str(path), threads=threads)
        return engine.predict
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", type=Path, help=".bonn and/or .onnx files (32x32 RGB inputs)")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=300, help="timed calls per model and batch size")
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args(argv)
    models = {m.name: load(m, args.threads) for m in args.models}
    width = max(map(len, models))
    for batch in (int(b) for b in args.batches.split(",")):
        x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        times: dict[str, list[float]] = {name: [] for name in models}
        for i in range(args.warmup + args.runs):
            for name, fn in models.items():
                t0 = time.perf_counter()
                fn(x)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        first = statistics.median(times[next(iter(models))])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"batch {batch:3d} threads {args.threads}  {name:<{width}}  {1e3 * med:8.3f} ms  "
                  f"(x{med / first:.2f} of the first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
