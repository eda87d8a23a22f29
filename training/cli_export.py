"""`bonn-serve export`: a checkpoint (or a random model) -> .bonn, plus optional ONNX files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, choices=["wrn22-16", "wrn22-64", "resnet18"])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="training checkpoint (.pt) of a binary or FP model")
    src.add_argument("--random", action="store_true",
                     help="randomise every parameter and BN statistic (for tests and benchmarks)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--out", type=Path, help="packed .bonn file (binary models only)")
    p.add_argument("--onnx-fp", type=Path, help="full-precision network as ONNX")
    p.add_argument("--onnx-binary", type=Path, help="the BONN emulated in float, as ONNX")
    p.add_argument("--name", default=None, help="model name stored in the header")


def load_checkpoint(path: Path):
    """Rebuild a model from a trainer checkpoint (plain tensors, loaded with weights_only=True)."""
    import torch

    from .models import build_model

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ckpt.get("config", {})
    arch = cfg.get("arch") or (cfg.get("model") or {}).get("arch")
    binary = bool(cfg.get("binary", (cfg.get("model") or {}).get("binary", True)))
    model = build_model(arch, binary=binary, num_classes=cfg.get("num_classes"))
    model.load_state_dict(ckpt["model"])
    return model.eval(), arch, ckpt


def run(args: argparse.Namespace) -> int:
    import torch

    from .export import export_bonn, export_onnx
    from .models import build_model, randomize_

    if not (args.out or args.onnx_fp or args.onnx_binary):
        raise SystemExit("nothing to do: give --out, --onnx-fp and/or --onnx-binary")
    provenance: dict = {}
    if args.random:
        binary = randomize_(build_model(args.arch, True, args.num_classes), args.seed).eval()
        fp = randomize_(build_model(args.arch, False, args.num_classes), args.seed).eval()
        provenance = {"random_seed": args.seed, "trained": False}
    else:
        model, arch, ckpt = load_checkpoint(args.checkpoint)
        if arch != args.arch:
            raise SystemExit(f"checkpoint is for arch {arch!r}, not {args.arch!r}")
        binary, fp = (model, None) if model.binary else (None, model)
        provenance = {"trained": True, "checkpoint": args.checkpoint.name,
                      "config": ckpt.get("config", {}), "epoch": ckpt.get("epoch")}
        if "metrics" in ckpt:
            provenance["metrics"] = ckpt["metrics"]
    torch.set_grad_enabled(False)
    if args.out:
        if binary is None:
            raise SystemExit("a full-precision checkpoint cannot be packed; use --onnx-fp")
        digest = export_bonn(binary, args.out, args.arch, provenance, name=args.name)
        print(json.dumps({"bonn": str(args.out), "bytes": args.out.stat().st_size, "sha256": digest}))
    if args.onnx_binary:
        if binary is None:
            raise SystemExit("--onnx-binary needs a binary model")
        export_onnx(binary, args.onnx_binary, arch=args.arch)
        print(json.dumps({"onnx_binary": str(args.onnx_binary), "bytes": args.onnx_binary.stat().st_size}))
    if args.onnx_fp:
        if fp is None:
            raise SystemExit("--onnx-fp needs a full-precision model (use --random or an FP checkpoint)")
        export_onnx(fp, args.onnx_fp, arch=args.arch)
        print(json.dumps({"onnx_fp": str(args.onnx_fp), "bytes": args.onnx_fp.stat().st_size}))
    return 0
