"""`bonn-serve eval M.bonn --data-dir DIR [--split test] [--json OUT.json]`: accuracy of a packed model run
THROUGH THE ENGINE, with the model's own preprocessing (scale/mean/std from the .bonn header).

An `.onnx` file (the full-precision baseline) is evaluated with onnxruntime instead; ONNX carries no
preprocessing, so its mean/std come from --mean/--std (default: the CIFAR-10 statistics the trainer uses).
numpy only: never imports torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help=".bonn file (engine) or .onnx file (onnxruntime)")
    p.add_argument("--data-dir", required=True,
                   help="CIFAR-10 directory (npz files, cifar10_mini.npz or python batches)")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--layout", default="auto", choices=("auto", "npz", "mini", "batches"))
    p.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    p.add_argument("--predictions", type=Path, metavar="FILE.npz",
                   help="also save each image's predicted class and label (for a paired test of two models: "
                        "python -m training.paired A.npz B.npz)")
    p.add_argument("--threads", type=int, default=None, help="engine/onnxruntime threads (default: all)")
    p.add_argument("--batch", type=int, default=250, help="images per engine call")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate only N images, taken from the classes in turn (the files are sorted by class)")
    p.add_argument("--mean", type=float, nargs=3, default=None, help="ONNX only: channel means (0..1)")
    p.add_argument("--std", type=float, nargs=3, default=None, help="ONNX only: per-channel std (0..1 scale)")


def normalize(x_nhwc, scale: float, mean, std):
    """uint8 NHWC -> float32 NCHW: (x * scale - mean) / std."""
    import numpy as np

    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    x = x_nhwc.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(scale)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


def evaluate(predict: Callable, x, y, batch: int, num_classes: int, prep: Callable,
             predictions: list | None = None) -> dict[str, Any]:
    """Accuracy overall and per class; each batch's predicted classes are appended to `predictions` if given."""
    import numpy as np

    correct = np.zeros(num_classes, np.int64)
    total = np.zeros(num_classes, np.int64)
    t0 = time.perf_counter()
    for i in range(0, len(y), batch):
        logits = np.asarray(predict(prep(x[i:i + batch])))
        if logits.ndim != 2 or logits.shape[0] != len(y[i:i + batch]) or logits.shape[1] != num_classes:
            raise ValueError(f"model returned logits of shape {logits.shape}")
        pred = logits.argmax(1)
        if predictions is not None:
            predictions.append(pred)
        yy = y[i:i + batch]
        np.add.at(total, yy, 1)
        np.add.at(correct, yy[pred == yy], 1)
    dt = time.perf_counter() - t0
    n = int(total.sum())
    return {"n": n, "correct": int(correct.sum()), "accuracy": float(correct.sum() / max(n, 1)),
            "per_class_accuracy": [float(c / t) if t else None for c, t in zip(correct, total)],
            "seconds": dt, "images_per_s": n / dt if dt > 0 else None}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(args: argparse.Namespace) -> int:
    from bonn_serve.datasets import DatasetError, balanced_subset, load_cifar10

    if not args.model.is_file():
        print(f"bonn-serve eval: {args.model} not found", file=sys.stderr)
        return 2
    if args.batch < 1 or (args.limit is not None and args.limit < 1):
        print("bonn-serve eval: --batch and --limit must be >= 1", file=sys.stderr)
        return 2
    try:
        x, y = load_cifar10(args.data_dir, args.split, args.layout)
    except DatasetError as e:
        print(f"bonn-serve eval: {e}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"model": str(args.model), "bytes": args.model.stat().st_size,
                              "sha256": sha256_file(args.model), "data_dir": str(args.data_dir),
                              "split": args.split}
    if args.limit is not None:
        keep = balanced_subset(y, args.limit)
        x, y = x[keep], y[keep]
        result["subset"] = "class-balanced (bonn_serve.datasets.balanced_subset)"
    preds: list = []
    if args.model.suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if args.threads:
            opts.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])
        mean, std = tuple(args.mean or CIFAR10_MEAN), tuple(args.std or CIFAR10_STD)
        num_classes = int(sess.get_outputs()[0].shape[1])
        in_name = sess.get_inputs()[0].name
        result.update(runtime=f"onnxruntime {ort.__version__}", mean=mean, std=std)
        result.update(evaluate(lambda a: sess.run(None, {in_name: a})[0], x, y, args.batch, num_classes,
                               lambda b: normalize(b, 1.0 / 255.0, mean, std), preds))
    else:
        from bonn_serve.engine import Engine
        from bonn_serve.format import BonnFormatError

        try:
            engine = Engine.load(args.model, threads=args.threads)
        except (BonnFormatError, ValueError, OSError) as e:
            print(f"bonn-serve eval: {e}", file=sys.stderr)
            return 2
        spec = engine.input_spec
        if (int(spec["height"]), int(spec["width"])) != x.shape[1:3]:
            print(f"bonn-serve eval: model expects {spec['height']}x{spec['width']} input, the data is "
                  f"{x.shape[1]}x{x.shape[2]}", file=sys.stderr)
            return 2
        result.update(runtime="bonn-serve engine", arch=engine.arch, threads=engine.threads,
                      popcount_path=engine.popcount_path, mean=spec["mean"], std=spec["std"])
        scale = float(spec.get("scale", 1 / 255))
        result.update(evaluate(engine.predict, x, y, args.batch, len(engine.classes),
                               lambda b: normalize(b, scale, spec["mean"], spec["std"]), preds))
    if args.predictions:
        import numpy as np

        args.predictions.parent.mkdir(parents=True, exist_ok=True)
        # images in the evaluated order (the data files' order, or the --limit subset's); sha256 names the model
        with open(args.predictions, "wb") as f:  # a file object: np.savez would append ".npz" to other names
            np.savez(f, pred=np.concatenate(preds).astype(np.int16), label=np.asarray(y, np.int16),
                     sha256=np.asarray(result["sha256"]), split=np.asarray(args.split))
        result["predictions"] = str(args.predictions)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0
