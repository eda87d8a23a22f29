"""`bonn-serve train`: train a BONN or a baseline from a YAML config (single process, or under torchrun).

    bonn-serve train --config training/configs/bonn_wrn22_16.yaml --data-dir DIR --out runs/NAME [--epochs N]
    torchrun --nproc_per_node 2 -m training.cli_train --config ... (gloo on CPU)

Ctrl-C / SIGTERM stops after the current epoch's checkpoint (a second one stops at once); `--resume` continues.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="YAML file (keys: trainer.DEFAULTS)")
    p.add_argument("--data-dir", required=True,
                   help="CIFAR-10 directory (npz files, cifar10_mini.npz, or python batches)")
    p.add_argument("--out", type=Path, required=True, help="run dir (checkpoint, metrics, plots, model)")
    p.add_argument("--epochs", type=int, help="override the config's epoch count (sets the schedule's length: "
                   "the cosine, or where a step schedule's milestones fall)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init-from", type=Path, metavar="CKPT",
                   help="fine-tune: start from another run's checkpoint weights (and Bayesian state), with a "
                        "fresh optimizer and this config's schedule")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: config)")
    p.add_argument("--layout", choices=("auto", "npz", "mini", "batches"), help="data directory layout")
    p.add_argument("--limit-train", type=int, help="use only N training images (smoke tests)")
    p.add_argument("--limit-test", type=int, help="use only N test images (smoke tests)")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--val-size", type=int, metavar="N",
                   help="hold N training images out as a validation set (class-balanced, the same for every run); "
                        "choose hyperparameters on it, not on the test set")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default: config, auto)")
    p.add_argument("--binary-conv-dtype", choices=("float32", "bfloat16"),
                   help="arithmetic of the binary convolutions while training (default: config, float32); "
                        "bfloat16 is exact forward and faster on CPUs with AMX/AVX512-BF16 (docs/method.md 13)")
    p.add_argument("--time-budget", type=float, metavar="MIN",
                   help="fit the schedule to MIN minutes: after epoch 2 its length becomes the number of "
                        "epochs that fit (recorded in config.json and the checkpoint)")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop once N epochs are done; the schedule stays --epochs long (continue with --resume)")
    p.add_argument("--no-export", action="store_true", help="skip model.bonn / model.onnx at the end")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--no-plots", action="store_true",
                   help="skip the per-epoch plots (make them later: python -m training.plots OUT)")


def load_yaml_config(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise SystemExit(f"config {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"config {path} must be a mapping")
    return data


def run(args: argparse.Namespace) -> int:
    import os

    import torch
    import torch.distributed as dist

    from .trainer import Trainer, make_config

    overrides = load_yaml_config(args.config)
    overrides.setdefault("name", args.config.stem)
    for key, val in (("epochs", args.epochs), ("threads", args.threads), ("layout", args.layout),
                     ("seed", args.seed), ("device", args.device), ("val_size", args.val_size),
                     ("binary_conv_dtype", args.binary_conv_dtype),
                     ("init_from", args.init_from)):
        if val is not None:
            overrides[key] = val
    if args.limit_train is not None:
        overrides["limit_train"] = args.limit_train
    if args.limit_test is not None:
        overrides["limit_test"] = args.limit_test
    if args.no_export:
        overrides["export"] = False
    if args.stop_after is not None and args.stop_after < 1:
        raise SystemExit(f"--stop-after must be >= 1, got {args.stop_after}")
    try:
        cfg = make_config(overrides)
    except ValueError as e:
        raise SystemExit(f"bad config {args.config}: {e}")
    torch.set_num_threads(int(cfg["threads"]))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and args.time_budget is not None:
        raise SystemExit("--time-budget is for single-process runs (ranks would plan different schedules)")
    if distributed and not dist.is_initialized():
        dist.init_process_group("gloo")
    try:
        try:
            trainer = Trainer(cfg, args.data_dir, args.out, load_init=not args.resume)
        except ValueError as e:  # no GPU, unreadable data, too few images: a message, not a traceback
            raise SystemExit(f"bonn-serve train: {e}")
        ckpt = args.out / "checkpoint.pt"
        if args.resume:
            if not ckpt.exists():
                raise SystemExit(f"--resume: {ckpt} does not exist")
            try:
                trainer.resume(ckpt, keep_epochs=args.epochs is None)  # the length it was saved with, unless told
            except ValueError as e:  # another run's checkpoint, or changed hyper-parameters: say which
                raise SystemExit(f"bonn-serve train --resume: {e}") from None
            print(f"resumed {ckpt} at epoch {trainer.epoch}, step {trainer.step}", flush=True)
            if trainer.epoch >= int(trainer.cfg["epochs"]) and args.time_budget is None:
                print(f"{args.out} has finished its {trainer.cfg['epochs']} epochs; pass --epochs N (> "
                      f"{trainer.epoch}) to train further on an N-epoch schedule", flush=True)
                return 0
        elif ckpt.exists():
            raise SystemExit(f"{ckpt} exists; pass --resume or choose another --out")
        budget = None if args.time_budget is None else 60.0 * args.time_budget
        last = trainer.fit(epochs=args.stop_after, progress=not args.no_progress, time_budget_s=budget,
                           plot=not args.no_plots)
        if trainer.stopped_early:
            print(f"stopped at epoch {trainer.epoch} of {trainer.cfg['epochs']} (checkpoint written); continue "
                  f"with: bonn-serve train --config {args.config} --out {args.out} --resume ...", flush=True)
        elif last:
            print(f"done: epoch {last['epoch']} test_acc {last['test_acc']:.4f}", flush=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bonn-serve train", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
