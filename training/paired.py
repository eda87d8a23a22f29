"""Two models on the same test images, compared image by image: `python -m training.paired A.npz B.npz`.

Several pairs (`A1 B1 A2 B2 ...`, e.g. one pair per seed or per starting point) print one row each and a pooled
row: the mean of the pairs' differences. Every pair reuses the same test images, so they are not independent
draws: an image that favours A in one pair tends to favour it in the others. The pooled interval therefore
comes from each image's summed difference D_i = sum_j (A_j right - B_j right) over the J pairs:
diff = sum D / (J n), se = sqrt(sum (D_i - mean D)^2) / (J n), and its p from the normal test diff / se (with
one pair this is exactly the single pair's interval). Summing the discordant counts as if the pairs covered
J n different images (what this tool did before session 15) leaves out the cross-pair terms and gives too
narrow an interval when an effect recurs on the same images. Pairs on different image sets are pooled that way,
as independent, and say so.

The inputs are `bonn-serve eval M --predictions M.npz` files. "BONN beats (b)" at one epoch is a difference of
two accuracies measured on the same 10,000 images, so the images both get right or both get wrong say nothing
about it; only the discordant ones do: b = A right and B wrong, c = A wrong and B right. McNemar's exact test
asks whether b and c could be two draws of a fair coin over b + c images (two-sided binomial p), and the paired
95 % interval of the accuracy difference is (b - c) / n +- 1.96 se with the paired standard error. This is the
test-set sampling noise only: a second training seed moves a binary net by more (0.5-0.7 points here).

That is why, with two pairs or more (one per training seed), the tool adds a row *across pairs*: the mean of
the pairs' differences with a Student-t interval on J - 1 degrees of freedom from their spread, and the
one-sample t-test p. It asks whether the recipe beats the other one, seed to seed, rather than whether these
particular trained nets differ on these images. A pair may also be two `bonn-serve eval --json` summaries
(A.json B.json) when the per-image predictions of older runs are gone: such a pair has no discordant counts, so
it is left out of the by-image pooled row and counts only in the across-pairs row.
"""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats


def load_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(predicted classes, labels, split) from a `bonn-serve eval --predictions` file."""
    with np.load(path) as z:
        missing = {"pred", "label", "split"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: not a `bonn-serve eval --predictions` file (missing {sorted(missing)})")
        return z["pred"].astype(np.int64), z["label"].astype(np.int64), str(z["split"])


def load_eval_summary(path: Path) -> tuple[int, int, str]:
    """(images, correct, split) from a `bonn-serve eval --json` file."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not {"n", "correct", "split"} <= data.keys():
        raise ValueError(f"{path}: not a `bonn-serve eval --json` file (needs n, correct and split)")
    n, correct = data["n"], data["correct"]
    if not (type(n) is int and type(correct) is int and 0 <= correct <= n and n > 0):
        raise ValueError(f"{path}: {correct} correct of {n} images")
    return n, correct, str(data["split"])


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: 2 P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, k) for k in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def _summary(n: int, b: int, c: int, acc_a: float, acc_b: float) -> dict[str, float]:
    """The paired difference (b - c) / n with its 95 % interval and McNemar's p, from the discordant counts."""
    diff = (b - c) / n
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n  # paired (correlated) standard error
    return {"n": n, "acc_a": acc_a, "acc_b": acc_b, "a_only": b, "b_only": c,
            "diff": diff, "ci_low": diff - 1.96 * se, "ci_high": diff + 1.96 * se, "p": mcnemar_exact_p(b, c)}


def compare(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracies, the discordant counts, the paired difference with its 95 % interval, and McNemar's p.
    Also the per-image difference (`d`: +1 only A right, -1 only B right) and the images (`labels`) for pooling."""
    if not (pred_a.shape == pred_b.shape == labels.shape) or labels.ndim != 1 or labels.size == 0:
        raise ValueError("both prediction files must cover the same, non-empty list of images")
    right_a, right_b = pred_a == labels, pred_b == labels
    row: dict[str, Any] = _summary(labels.size, int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b)),
                                   float(right_a.mean()), float(right_b.mean()))
    row["d"] = right_a.astype(np.int64) - right_b.astype(np.int64)
    row["labels"] = labels
    return row


def compare_summaries(n: int, correct_a: int, correct_b: int) -> dict[str, Any]:
    """A pair known only by its two accuracies: the difference, without an interval or per-image data."""
    return {"n": n, "acc_a": correct_a / n, "acc_b": correct_b / n, "diff": (correct_a - correct_b) / n}


def across_pairs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The pairs' differences as J draws of the recipe's effect (module docstring): their mean, its Student-t
    95 % interval on J - 1 degrees of freedom, and the one-sample t-test p against 0."""
    if len(rows) < 2:
        raise ValueError("an interval across pairs needs two pairs or more")
    diffs = np.array([r["diff"] for r in rows], dtype=np.float64)
    j, mean = diffs.size, float(diffs.mean())
    se = float(diffs.std(ddof=1)) / math.sqrt(j)
    half = float(stats.t.ppf(0.975, j - 1)) * se
    p = 1.0 if se == 0 and mean == 0 else (0.0 if se == 0 else float(2 * stats.t.sf(abs(mean) / se, j - 1)))
    return {"n": sum(r["n"] for r in rows), "pairs": j, "acc_a": float(np.mean([r["acc_a"] for r in rows])),
            "acc_b": float(np.mean([r["acc_b"] for r in rows])), "diff": mean, "sd": float(diffs.std(ddof=1)),
            "ci_low": mean - half, "ci_high": mean + half, "p": p}


def pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One comparison over several pairs (module docstring): on the same images, clustered by image; on
    different image sets, as independent images (discordant counts summed)."""
    if len(rows) == 1:
        return rows[0]
    n = sum(r["n"] for r in rows)
    out = _summary(n, sum(r["a_only"] for r in rows), sum(r["b_only"] for r in rows),
                   sum(r["acc_a"] * r["n"] for r in rows) / n, sum(r["acc_b"] * r["n"] for r in rows) / n)
    same = all("d" in r and np.array_equal(r["labels"], rows[0]["labels"]) for r in rows)
    out["method"] = "by image" if same else "independent (different image sets)"
    if same:
        total = np.sum([r["d"] for r in rows], axis=0)  # D_i: image i's summed difference over the pairs
        j, m = len(rows), total.size
        diff = float(total.sum()) / (j * m)
        se = float(np.sqrt(np.sum((total - total.mean()) ** 2))) / (j * m)
        out.update(diff=diff, ci_low=diff - 1.96 * se, ci_high=diff + 1.96 * se,
                   p=1.0 if se == 0 else math.erfc(abs(diff) / se / math.sqrt(2)))
    return out


def compare_files(path_a: Path, path_b: Path) -> dict[str, Any]:
    if path_a.suffix == ".json" or path_b.suffix == ".json":
        if path_a.suffix != path_b.suffix:
            raise ValueError(f"{path_a} and {path_b}: a pair is two prediction files or two eval summaries")
        (n_a, right_a, split_a), (n_b, right_b, split_b) = load_eval_summary(path_a), load_eval_summary(path_b)
        if (n_a, split_a) != (n_b, split_b):
            raise ValueError(f"{path_a} and {path_b} were evaluated on different images")
        return compare_summaries(n_a, right_a, right_b)
    pred_a, labels, split_a = load_predictions(path_a)
    pred_b, labels_b, split_b = load_predictions(path_b)
    if split_a != split_b or not np.array_equal(labels, labels_b):
        raise ValueError(f"{path_a} and {path_b} were evaluated on different images")
    return compare(pred_a, pred_b, labels)


def _table_row(label: str, r: dict[str, float]) -> str:
    if "ci_low" not in r:  # a pair known by its accuracies only
        return (f"| {label} | {r['n']} | {100 * r['acc_a']:.2f} | {100 * r['acc_b']:.2f} | {100 * r['diff']:+.2f} "
                "(accuracies only) | – | – | – |")
    if "pairs" in r:  # across pairs: no discordant counts, a t-test p
        return (f"| {label} | {r['n']} | {100 * r['acc_a']:.2f} | {100 * r['acc_b']:.2f} | {100 * r['diff']:+.2f} "
                f"({100 * r['ci_low']:+.2f} … {100 * r['ci_high']:+.2f}) | – | – | t-test {r['p']:.3g} |")
    return (f"| {label} | {r['n']} | {100 * r['acc_a']:.2f} | {100 * r['acc_b']:.2f} | {100 * r['diff']:+.2f} "
            f"({100 * r['ci_low']:+.2f} … {100 * r['ci_high']:+.2f}) | {r['a_only']} | {r['b_only']} | {r['p']:.3g} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.paired", description=__doc__.split("\n")[0])
    p.add_argument("files", type=Path, nargs="+", metavar="A.npz B.npz",
                   help="predictions (`bonn-serve eval M --predictions M.npz`) of model A then model B, on the "
                        "same images; more pairs are pooled. A pair may be two `bonn-serve eval --json` "
                        "summaries instead (A.json B.json)")
    p.add_argument("--names", nargs=2, default=("A", "B"), metavar=("A", "B"))
    args = p.parse_args(argv)
    if len(args.files) % 2:
        p.error("give the prediction files in pairs: A1 B1 [A2 B2 ...]")
    pairs = list(zip(args.files[::2], args.files[1::2]))
    try:
        rows = [compare_files(a_path, b_path) for a_path, b_path in pairs]
    except (OSError, ValueError) as e:
        p.exit(2, f"python -m training.paired: {e}\n")
    a, b = args.names
    print(f"| pair | n | {a} % | {b} % | {a} − {b} (95 % CI) | only {a} right | only {b} right | McNemar p |")
    print("|---|---|---|---|---|---|---|---|")
    for (a_path, b_path), r in zip(pairs, rows):
        print(_table_row(f"{a_path.stem} vs {b_path.stem}", r))
    with_images = [r for r in rows if "d" in r]
    if len(with_images) > 1:
        pool = pooled(with_images)
        print(_table_row(f"pooled ({len(with_images)} pairs, {pool['method']})", pool))
    if len(rows) > 1:
        seeds = across_pairs(rows)
        print(_table_row(f"across pairs ({len(rows)}, t on {len(rows) - 1} df; sd {100 * seeds['sd']:.2f})", seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
