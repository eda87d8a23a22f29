"""`bonn-serve bench`: whole-model latency of the XNOR engine vs onnxruntime FP32 and INT8, per-layer binary
throughput vs this CPU's popcount peak, and model sizes. Writes bench.json and latency.png."""

from __future__ import annotations

import argparse
from pathlib import Path


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _archs(text: str) -> list[str]:
    archs = [a.strip() for a in text.split(",") if a.strip()]
    known = ("resnet18", "wrn22-16", "wrn22-64")
    bad = [a for a in archs if a not in known]
    if not archs or bad:
        raise argparse.ArgumentTypeError(f"unknown arch {bad or text!r}; choose from {', '.join(known)}")
    return archs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", type=_archs, default=None, help="comma-separated (default resnet18,wrn22-16)")
    p.add_argument("--batches", type=_ints, default=None, help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--threads", type=_ints, default=None, help="comma-separated thread counts (default 1,2)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per measurement, after warm-up (default 20)")
    p.add_argument("--out-dir", type=Path, default=Path("out/bench"), help="where bench.json / latency.png go")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run (wrn22-16, batches 1,2, 1 thread, 3 runs) unless options say otherwise")


def run(args: argparse.Namespace) -> int:
    from bonn_serve.bench import BenchConfig, run_bench, summary_table, write_report

    cfg = BenchConfig(out_dir=args.out_dir)
    if args.quick:
        cfg.archs, cfg.batches, cfg.threads, cfg.runs = ["wrn22-16"], [1, 2], [1], 3
        cfg.warmup, cfg.calib_inputs, cfg.peak_seconds, cfg.layer_repeats = 1, 2, 0.05, 3
    cfg.archs = args.archs or cfg.archs
    cfg.batches = args.batches or cfg.batches
    cfg.threads = args.threads or cfg.threads
    if args.runs is not None:
        if args.runs < 1:
            print("bonn-serve bench: --runs must be >= 1")
            return 2
        cfg.runs = args.runs
    result = run_bench(cfg)
    jpath, ppath = write_report(result, cfg.out_dir)
    print(summary_table(result))
    print(f"wrote {jpath} and {ppath}")
    return 0
