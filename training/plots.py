"""Plots of a run directory's metrics.jsonl (matplotlib Agg, no display): accuracy and loss curves, and the
latent-weight histograms per epoch that show whether the kernel prior makes the weights bimodal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def metrics_file(run: Path) -> Path:
    """Where a run's log is: `RUN_DIR/metrics.jsonl`, or the path itself when it is a log file (the copies in
    models/logs/ are named `X.train.jsonl`)."""
    return run / "metrics.jsonl" if run.is_dir() else run


def run_label(run: Path) -> str:
    """A run's name: the directory's whole name (runs are often named like `bonn_s0.1`), or a log file's name
    without `.jsonl` and the `.train` that the copies in models/logs/ carry (`bonn_s0.train.jsonl` -> `bonn_s0`)."""
    if not run.is_file():
        return run.name
    return run.name.removesuffix(".jsonl").removesuffix(".train")


def epoch_records(recs: list[dict[str, Any]], kinds: tuple[str, ...] = ("epoch",)) -> list[dict[str, Any]]:
    """One record per epoch, in epoch order. A run resumed from an earlier checkpoint logs the epochs after it
    again; the last record of an epoch wins, as the checkpoint it came from is the one the run went on from."""
    by_epoch = {r["epoch"]: r for r in recs if r.get("kind") in kinds}
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write NAME_curves.png and NAME_weight_hist.png (binary runs) for one run, a run directory or a log file
    (then next to it, unless `out_dir` is given); returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out_dir = Path(out_dir or metrics_file(run_dir).parent)
    recs = read_metrics(metrics_file(run_dir))
    epochs = epoch_records(recs)
    written: list[Path] = []
    if not epochs:
        return written
    name = run_label(run_dir)
    ep = [r["epoch"] for r in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(ep, [100 * r["test_acc"] for r in epochs], "o-", label="test")
    axes[0].plot(ep, [100 * r["train_acc"] for r in epochs], "s--", label="train (augmented)")
    if any("val_acc" in r for r in epochs):
        axes[0].plot([r["epoch"] for r in epochs if "val_acc" in r],
                     [100 * r["val_acc"] for r in epochs if "val_acc" in r], "d-", label="validation")
    axes[0].set(xlabel="epoch", ylabel="accuracy %", title=f"{name}: accuracy")
    axes[1].plot(ep, [r["train_ce"] for r in epochs], "o-", label="train CE")
    axes[1].plot(ep, [r["test_loss"] for r in epochs], "s--", label="test CE")
    for key in ("train_kernel", "train_feature"):
        if any(key in r for r in epochs):
            axes[1].plot([r["epoch"] for r in epochs if key in r], [r[key] for r in epochs if key in r],
                         "^-", label=key.replace("train_", "L_"))
    axes[1].set(xlabel="epoch", ylabel="loss", title="losses", yscale="log")
    steps = [r for r in recs if r.get("kind") == "step" and "grad_ratio" in r]
    if steps:
        axes[2].plot([r["step"] for r in steps], [r["grad_ratio"] for r in steps], ".-")
        axes[2].set(xlabel="step", ylabel="ratio", yscale="log",
                    title="||dL_kernel/dX|| / ||dL_S/dX||")
    elif "bc_mean" in epochs[-1]:
        axes[2].plot(ep, [r["bc_mean"] for r in epochs], "o-")
        axes[2].set(xlabel="epoch", ylabel="Sarle BC", title="bimodality of latent weights")
    else:
        axes[2].axis("off")
    for ax in axes[:2]:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    p = out_dir / f"{name}_curves.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    written.append(p)

    hist_recs = [r for r in epoch_records(recs, ("init", "epoch")) if r.get("hist")]
    if hist_recs:
        layers = list(hist_recs[-1]["hist"])
        fig, axes = plt.subplots(1, len(layers) + 1, figsize=(5 * (len(layers) + 1), 4))
        cmap = plt.get_cmap("viridis")
        for ax, layer in zip(axes, layers):
            for j, r in enumerate(hist_recs):
                h = r["hist"].get(layer)
                if not h:
                    continue
                n = len(h["counts"])
                lim = h["lim"]
                xs = [(-lim + (k + 0.5) * 2 * lim / n) / lim for k in range(n)]
                tot = max(sum(h["counts"]), 1)
                ax.plot(xs, [c / tot for c in h["counts"]], color=cmap(j / max(len(hist_recs) - 1, 1)),
                        label=f"ep {r['epoch']}" if j in (0, len(hist_recs) - 1) else None)
            ax.set(xlabel="latent weight / (99.5% |w| quantile)", ylabel="fraction",
                   title=f"{name}: binary {layer}")
            ax.legend()
        axes[-1].plot([r["epoch"] for r in hist_recs], [r["bc_mean"] for r in hist_recs], "o-",
                      label="Sarle BC")
        axes[-1].axhline(5 / 9, color="gray", ls=":", label="5/9 (bimodal above)")
        axes[-1].set(xlabel="epoch", ylabel="BC (mean over binary layers)", title="bimodality")
        axes[-1].legend(loc="upper left")
        moved = [r for r in hist_recs if "sign_changed_from_init" in r]
        if moved:  # do the binary weights learn? (method section 19)
            twin = axes[-1].twinx()
            twin.plot([r["epoch"] for r in moved], [100 * r["sign_changed_from_init"] for r in moved], "s--",
                      color="tab:red", label="signs changed since start")
            twin.set_ylabel("% of latent signs changed since start", color="tab:red")
            twin.legend(loc="lower right")
        fig.tight_layout()
        p = out_dir / f"{name}_weight_hist.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(p)
    return written


def plot_compare(run_dirs: list[str | Path], out_path: str | Path) -> Path:
    """Test and train accuracy and latent-weight bimodality of several runs (run directories or log files) on
    shared axes (BONN vs baselines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in map(Path, run_dirs):
        ep = epoch_records(read_metrics(metrics_file(run)), ("init", "epoch"))
        epochs = [r["epoch"] for r in ep]
        (line,) = axes[0].plot(epochs, [100 * r["test_acc"] for r in ep], "o-", label=run_label(run))
        # Training accuracy (dashed, same colour) tells underfitting from overfitting at a glance.
        tr = [r for r in ep if "train_acc" in r]
        if tr:
            axes[0].plot([r["epoch"] for r in tr], [100 * r["train_acc"] for r in tr], "--",
                         color=line.get_color(), alpha=0.6)
        if "bc_mean" in ep[-1]:
            axes[1].plot(epochs, [r["bc_mean"] for r in ep], "o-", label=run_label(run))
    axes[0].set(xlabel="epoch", ylabel="accuracy %",
                title="CIFAR-10 test (solid) and train (dashed) accuracy")
    axes[1].axhline(5 / 9, color="gray", ls=":", label="5/9")
    axes[1].axhline(1 / 3, color="gray", ls="--", label="Gaussian (1/3)")
    axes[1].set(xlabel="epoch", ylabel="Sarle BC (mean over binary layers)", title="latent-weight bimodality")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return Path(out_path)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m training.plots",
                                description="curves and latent-weight histograms of run dirs, or one "
                                            "comparison plot of several")
    p.add_argument("runs", nargs="+", type=Path,
                   help="run dirs (each holds a metrics.jsonl) or metrics JSONL files (the copies in models/logs/)")
    p.add_argument("--compare", metavar="OUT.png", help="one plot comparing the runs instead")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not metrics_file(r).is_file()]
    if missing:
        p.error(f"no metrics.jsonl in (or no such log file): {', '.join(missing)}")
    if args.compare:
        print(plot_compare(args.runs, args.compare))
    else:
        for run in args.runs:
            print(plot_run(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
