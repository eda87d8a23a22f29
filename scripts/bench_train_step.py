"""Time one training step of a config, with the binary convolutions in float32 and in bfloat16.

    python scripts/bench_train_step.py --config training/configs/bonn_wrn22_16_adam_sgdprior_lam1e5.yaml \
        --data-dir ../shared/data/cifar10 [--arch wrn22-64] [--threads 2] [--steps 10] [--repeats 3]

Each (dtype, repeat) runs in a fresh process (own torch.compile caches, no shared warm-up) on the same
batches; the table gives the median ms per step of each and the speed-up. Steps include the Bayesian
losses and the optimizer. Runs are interleaved (f32, bf16, f32, ...) so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    import torch
    import yaml

    sys.path.insert(0, str(ROOT))
    from training.data import train_batches
    from training.trainer import Trainer, make_config

    cfg = yaml.safe_load(Path(args.config).read_text())
    cfg.update(binary_conv_dtype=args.dtype, device="cpu", threads=args.threads, export=False,
               limit_train=args.batch * (args.steps + args.warmup), limit_test=100, batch_size=args.batch)
    if args.arch:
        cfg["arch"] = args.arch
    torch.set_num_threads(args.threads)
    tr = Trainer(make_config(cfg), args.data_dir, Path(args.tmp) / args.dtype)
    times = []
    for i, (xb, yb) in enumerate(train_batches(tr.train, args.batch, 0, 0, 0, 1, 0)):
        t = time.perf_counter()
        tr.train_step(xb, yb, feature_on=True, measure=False)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    print(json.dumps({"ms": 1e3 * statistics.median(times)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--arch", help="override the config's arch (e.g. wrn22-64)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default="/tmp/bench_train_step", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dtype:
        return child(args)
    passthrough = sys.argv[1:]
    results: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for r in range(args.repeats):
        for dtype in results:
            out = subprocess.run([sys.executable, __file__, *passthrough, "--dtype", dtype],
                                 capture_output=True, text=True, check=True)
            results[dtype].append(json.loads(out.stdout.strip().splitlines()[-1])["ms"])
            print(f"repeat {r + 1} {dtype}: {results[dtype][-1]:.0f} ms/step", file=sys.stderr, flush=True)
    f32, bf16 = (statistics.median(results[k]) for k in ("float32", "bfloat16"))
    arch = args.arch or "config's arch"
    print(f"| {arch}, {args.threads} thread(s), batch {args.batch} | float32 | bfloat16 | speed-up |")
    print("|---|---|---|---|")
    print(f"| ms per training step (median of {args.repeats}) | {f32:.0f} | {bf16:.0f} | {f32 / bf16:.2f}x |")


if __name__ == "__main__":
    main()
