"""`bonn-serve serve`: register the shipped models (idempotent) and start the BentoML HTTP server."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SERVICE = "bonn_serve.service:BonnClassifier"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default=os.environ.get("BONN_HOST", "127.0.0.1"),
        help="address to bind (0.0.0.0 in the container)",
    )
    p.add_argument("--port", type=int, default=int(os.environ.get("BONN_PORT", "3000")))
    p.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("BONN_MODELS_DIR", "models")),
        help="directory of shipped .bonn models (+ cards, FP ONNX) registered on start",
    )
    p.add_argument("--no-register", action="store_true", help="serve only what is already in the store")
    p.add_argument("--workers", type=int, default=None, help="server processes (env BONN_WORKERS)")
    p.add_argument("--threads", type=int, default=None, help="engine threads per worker (env BONN_THREADS)")
    p.add_argument("--models", default=None, help="comma-separated registry tags to serve (env BONN_MODELS)")


def run(args: argparse.Namespace) -> int:
    from bonn_serve import registry
    from bonn_serve.format import BonnFormatError

    home = registry.setup_environment()
    if not args.no_register and args.models_dir.is_dir():
        try:
            for entry, created in registry.register_dir(args.models_dir):
                print(
                    f"{'registered' if created else 'found'} {entry.tag} ({entry.backend})", file=sys.stderr
                )
        except (registry.RegistryError, BonnFormatError, OSError) as e:
            print(f"bonn-serve serve: cannot register {args.models_dir}: {e}", file=sys.stderr)
            return 1
    entries = registry.list_models()
    if not entries:
        print(
            f"bonn-serve serve: no model to serve: {args.models_dir}/ holds no .bonn model and the store "
            f"{home} is empty.\n  Train and export one (README), or for a quick test export a random one "
            "(needs the train extra):\n    bonn-serve export --arch wrn22-16 --random --out "
            "models/bonn-wrn22-16.bonn --onnx-fp models/fp-wrn22-16.onnx",
            file=sys.stderr,
        )
        return 2
    try:  # fail here, with the reason, rather than in every worker the server would keep restarting
        tags = [t.strip() for t in (args.models or os.environ.get("BONN_MODELS", "")).split(",") if t.strip()]
        for entry in [registry.get(t) for t in tags] if tags else entries:
            registry.verified_path(entry)
    except registry.RegistryError as e:
        print(f"bonn-serve serve: {e}", file=sys.stderr)
        return 1
    for flag, env in (
        (args.workers, "BONN_WORKERS"),
        (args.threads, "BONN_THREADS"),
        (args.models, "BONN_MODELS"),
    ):
        if flag is not None:
            os.environ[env] = str(flag)
    from bonn_serve.settings import load_settings

    try:
        load_settings()
    except ValueError as e:
        print(f"bonn-serve serve: {e}", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", args.host, "--port", str(args.port)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)  # the server replaces this process: signals reach it directly
    return 0  # not reached
