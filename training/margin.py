"""Two runs on one schedule compared at equal epochs: `python -m training.margin RUN_A RUN_B [--window 10]`.

"BONN beats (b) at equal budget" is read off the epochs both runs have finished: per window of epochs, the
mean test accuracy of each and their difference, and how many of those epochs A was ahead. Only meaningful
when the runs share seed, schedule and lr (the campaign's runs do); one seed's per-epoch accuracies are
correlated, so a window's margin is a hint to be checked on more seeds, not a significance test.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from .plots import read_metrics
from .summarize import emit


def epoch_accuracy(run: Path) -> dict[int, float]:
    """{epoch: test accuracy} from a run directory or a metrics JSONL file; the last record of an epoch wins
    (a run resumed from an earlier checkpoint rewrites the epochs after it)."""
    path = run / "metrics.jsonl" if run.is_dir() else run
    acc = {r["epoch"]: r["test_acc"] for r in read_metrics(path)
           if r.get("kind") == "epoch" and r.get("test_acc") is not None}
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.margin", description=__doc__.splitlines()[0])
    p.add_argument("run_a", type=Path, help="run directory or metrics JSONL (e.g. BONN)")
    p.add_argument("run_b", type=Path, help="run directory or metrics JSONL (e.g. the same net, losses off)")
    p.add_argument("--window", type=int, default=10, help="epochs per row (default 10)")
    p.add_argument("--names", nargs=2, default=("A", "B"), metavar=("A", "B"), help="column names")
    p.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    try:
        text = table(windows(epoch_accuracy(args.run_a), epoch_accuracy(args.run_b), args.window), *args.names)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"margin: {e}")
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
