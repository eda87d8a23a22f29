"""Runs on one schedule compared at equal epochs: `python -m training.margin A B [A2 B2 ...] [--window 10]`.

"BONN beats (b) at equal budget" is read off the epochs both runs have finished: per window of epochs, the
mean test accuracy of each and their difference, and how many of those epochs A was ahead. Only meaningful
when the runs share seed, schedule and lr (the campaign's runs do); one seed's per-epoch accuracies are
correlated, so a window's margin is a hint to be checked on more seeds, not a significance test.

Several pairs (A B A2 B2 ..., e.g. one per seed) give one table each; `--plot` draws A − B per epoch for every
pair and, over the epochs all pairs share, their mean.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from .plots import epoch_records, metrics_file, read_metrics, run_label
from .summarize import emit


def epoch_accuracy(run: Path) -> dict[int, float]:
    """{epoch: test accuracy} from a run directory or a metrics JSONL file; the last record of an epoch wins
    (a run resumed from an earlier checkpoint rewrites the epochs after it)."""
    path = metrics_file(run)
    acc = {r["epoch"]: r["test_acc"] for r in epoch_records(read_metrics(path)) if r.get("test_acc") is not None}
    if not acc:
        raise ValueError(f"{path}: no epoch with a test accuracy")
    return acc


def windows(a: dict[int, float], b: dict[int, float], width: int) -> list[dict[str, float]]:
    """Rows over the common epochs, `width` epochs each (epochs 1-10, 11-20, ... for width 10), and a last row
    over all of them. Accuracies in percent."""
    if width < 1:
        raise ValueError("window must be at least 1 epoch")
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the runs share no finished epoch")
    buckets: dict[int, list[int]] = {}
    for e in common:
        buckets.setdefault((e - 1) // width, []).append(e)
    rows = [_row(eps, a, b) for _, eps in sorted(buckets.items())]
    return rows + [_row(common, a, b)]


def _row(epochs: list[int], a: dict[int, float], b: dict[int, float]) -> dict[str, float]:
    ma = 100 * statistics.mean(a[e] for e in epochs)
    mb = 100 * statistics.mean(b[e] for e in epochs)
    return {"first": epochs[0], "last": epochs[-1], "n": len(epochs), "a": ma, "b": mb, "diff": ma - mb,
            "a_ahead": sum(a[e] > b[e] for e in epochs)}


def table(rows: list[dict[str, float]], name_a: str, name_b: str) -> str:
    lines = [f"| epochs | {name_a} % | {name_b} % | {name_a} − {name_b} | epochs {name_a} ahead |",
             "|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        span = f"{r['first']}-{r['last']}" + (" (all)" if i == len(rows) - 1 else "")
        lines.append(f"| {span} | {r['a']:.2f} | {r['b']:.2f} | {r['diff']:+.2f} | {r['a_ahead']}/{r['n']} |")
    return "\n".join(lines)


def plot_margins(pairs: list[tuple[dict[int, float], dict[int, float]]], labels: list[str], names: tuple[str, str],
                 out: Path, mean: bool = True) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    diffs = []
    for (a, b), label in zip(pairs, labels):
        common = sorted(set(a) & set(b))
        diffs.append({e: 100 * (a[e] - b[e]) for e in common})
        ax.plot(common, [diffs[-1][e] for e in common], lw=0.8, alpha=0.6, label=label)
    shared = sorted(set.intersection(*(set(d) for d in diffs)))
    if mean and len(pairs) > 1 and shared:
        ax.plot(shared, [statistics.mean(d[e] for d in diffs) for e in shared], "k-", lw=2,
                label=f"mean of {len(pairs)}")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(xlabel="epoch", ylabel=f"{names[0]} − {names[1]} (test accuracy points)",
           title=f"{names[0]} vs {names[1]} at equal epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.margin", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path,
                   help="pairs of run directories or metrics JSONL files: A B [A2 B2 ...] (e.g. BONN, then the "
                        "same net with the losses off)")
    p.add_argument("--window", type=int, default=10, help="epochs per row (default 10)")
    p.add_argument("--names", nargs=2, default=("A", "B"), metavar=("A", "B"), help="column names")
    p.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    p.add_argument("--plot", type=Path, help="write the per-epoch margins of every pair to this PNG")
    p.add_argument("--no-mean", action="store_true",
                   help="no mean line in the plot: the pairs are different variants, not seeds of one")
    args = p.parse_args(argv)
    if len(args.runs) % 2:
        raise SystemExit("margin: give runs in pairs: A B [A2 B2 ...]")
    pairs_paths = list(zip(args.runs[::2], args.runs[1::2]))
    try:
        pairs = [(epoch_accuracy(a), epoch_accuracy(b)) for a, b in pairs_paths]
        tables = [table(windows(a, b, args.window), *args.names) for a, b in pairs]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"margin: {e}")
    labels = [f"{run_label(a)} vs {run_label(b)}" for a, b in pairs_paths]
    text = "\n\n".join(f"{label}\n\n{tab}" if len(pairs) > 1 else tab for label, tab in zip(labels, tables))
    emit(text, args.out)
    if args.plot:
        print(plot_margins(pairs, labels, tuple(args.names), args.plot, mean=not args.no_mean))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
