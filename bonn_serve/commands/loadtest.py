"""`bonn-serve loadtest`: start the server on loopback (or use --host), drive it with Locust (subprocess),
write CSV/HTML/summary.json and exit 1 when a gate in loadtests/thresholds.yaml is broken.

Modes: a normal run (mixed traffic), --soak (samples the server's RSS, fails on > max_rss_growth after
warm-up) and --compare (the same load on the BONN route and the FP route, table + PNG chart)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default=os.environ.get("LOADTEST_HOST") or None,
        help="URL of a running server (env LOADTEST_HOST; default: start one on a free loopback port)",
    )
    p.add_argument("--port", type=int, help="port for the server this command starts (default: a free one)")
    p.add_argument(
        "--bentoml-home",
        type=Path,
        help="model store for the started server (default: a temp dir, "
        "filled from models/ by `serve` or from --bonn/--fp)",
    )
    p.add_argument("--bonn", type=Path, help="register this .bonn model before serving")
    p.add_argument("--fp", type=Path, help="with --bonn: its FP ONNX baseline")
    p.add_argument(
        "--users", type=int, default=int(os.environ.get("LOADTEST_USERS", "8")), help="env LOADTEST_USERS"
    )
    p.add_argument("--spawn-rate", type=float, default=4.0)
    p.add_argument(
        "--duration",
        type=int,
        default=int(os.environ.get("LOADTEST_DURATION", "60")),
        help="seconds of load (per route and round in --compare; env LOADTEST_DURATION)",
    )
    p.add_argument("--models", default="bonn,fp", help="routes to load: bonn, fp or both")
    p.add_argument(
        "--mix",
        choices=["full", "small"],
        default="full",
        help="full: small/large/multi-image/raw requests; small: single CIFAR-sized JPEGs",
    )
    p.add_argument("--fp-model", help="registry name of the FP baseline (default: found via GET /models)")
    p.add_argument("--profile", help="thresholds profile (default: soak with --soak, else default)")
    p.add_argument("--thresholds", type=Path, help="thresholds file (default: loadtests/thresholds.yaml)")
    p.add_argument("--locustfile", type=Path, help="default: loadtests/locustfile.py of this checkout")
    p.add_argument("--out", type=Path, help="report directory (default: runs/loadtest/<timestamp>)")
    p.add_argument("--soak", action="store_true", help="sample server RSS and gate on its growth")
    p.add_argument("--warmup", type=float, help="soak warm-up seconds excluded from the RSS baseline")
    p.add_argument("--compare", action="store_true", help="BONN vs FP side-by-side (table + PNG)")
    p.add_argument("--rounds", type=int, default=2, help="--compare: alternating rounds per route")
    p.add_argument("--chart", type=Path, help="--compare: PNG path (default: OUT/loadtest_bonn_vs_fp.png)")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the started server (repeatable)",
    )
    p.add_argument("--client-timeout", type=float, default=30.0, help="per-request client timeout (s)")
    p.add_argument("--think-ms", type=float, default=50.0,
                   help="each user waits 0..THINK_MS between requests (0: no wait, saturation throughput)")


def run(args: argparse.Namespace) -> int:
    from bonn_serve import loadtest as lt

    if args.think_ms < 0:
        print("bonn-serve loadtest: --think-ms must be >= 0", file=sys.stderr)
        return 2
    if args.compare:  # compare mode runs each route alone and gates on failures only: say so, ignore nothing
        clash = [f for f, on in (("--soak", args.soak), ("--warmup", args.warmup is not None),
                                 ("--profile", args.profile is not None), ("--models", args.models != "bonn,fp"))
                 if on]
        if clash:
            print(f"bonn-serve loadtest: {', '.join(clash)} cannot be combined with --compare "
                  "(it loads each route in turn and gates on failures only)", file=sys.stderr)
            return 2
        if args.rounds < 1:
            print("bonn-serve loadtest: --rounds must be >= 1", file=sys.stderr)
            return 2
    out = args.out or Path("runs/loadtest") / time.strftime("%Y%m%d-%H%M%S")
    env = {}
    for kv in args.server_env:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            print(f"--server-env expects KEY=VALUE, got {kv!r}", file=sys.stderr)
            return 2
        env[key] = value
    opts = lt.RunOptions(
        out_dir=out,
        profile=args.profile or ("soak" if args.soak else "default"),
        thresholds=args.thresholds,
        host=args.host,
        bentoml_home=args.bentoml_home,
        port=args.port,
        bonn=args.bonn,
        fp=args.fp,
        server_env=env,
        soak=args.soak,
        soak_warmup_s=args.warmup,
        compare=args.compare,
        rounds=args.rounds,
        chart=args.chart,
        locust=lt.LocustConfig(
            host="",
            users=args.users,
            spawn_rate=args.spawn_rate,
            duration_s=args.duration,
            models=args.models,
            mix=args.mix,
            fp_model=args.fp_model,
            locustfile=args.locustfile,
            client_timeout_s=args.client_timeout,
            think_ms=args.think_ms,
        ),
    )
    try:
        summary, broken = lt.execute(opts)
    except (RuntimeError, TimeoutError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"bonn-serve loadtest: {e}", file=sys.stderr)
        return 2
    lt.print_summary(summary)
    print(f"reports: {out}")
    return 1 if broken else 0
