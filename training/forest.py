"""Every BONN vs (b) comparison in one table and one figure: `python -m training.forest models/logs/bonn_vs_b.csv`.

The CSV (one row per trained pair, kept next to the logs it cites) holds each pair's two test accuracies through
the engine, their difference and, where the per-image predictions were kept, its paired 95 % interval
(`python -m training.paired`). Rows sharing a recipe (`group`) and a budget (`epochs`) over three seeds or more
get a summary row (with two, the t interval on 1 df is 12.7 standard errors wide and says nothing the two rows
do not): the mean difference with the Student-t interval across seeds (`training.paired.across_pairs`),
the question "does this recipe beat (b)?". The figure draws every row against the issue's +1 target and the
paper's +2.37 (WRN-22 16-16-32-64, 200 epochs).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

from .paired import across_pairs

PAPER_GAIN = 2.37  # the paper's BONN − (b) on CIFAR-10, WRN-22 16-16-32-64 (87.34 − 84.97)
TARGET_GAIN = 1.0  # issue #3's target
FIELDS = ("group", "epochs", "seed", "bonn_pct", "b_pct", "diff", "ci_low", "ci_high", "source")


def _number(row: dict[str, str], key: str, line: int, optional: bool = False) -> float | None:
    text = (row.get(key) or "").strip()
    if not text and optional:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"line {line}: {key} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"line {line}: {key} must be finite")
    return value


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """The CSV's rows, checked: the difference is the two accuracies' (to the 0.01 they are rounded to) and lies
    inside its interval; an interval is given whole or not at all."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {k: (raw.get(k) or "").strip() for k in ("group", "seed", "source")}
            if not row["group"]:
                raise ValueError(f"line {line}: empty group")
            epochs = _number(raw, "epochs", line)
            if epochs is None or epochs != int(epochs) or epochs < 1:
                raise ValueError(f"line {line}: epochs must be a whole number ≥ 1")
            row["epochs"] = int(epochs)
            for key in ("bonn_pct", "b_pct", "diff"):
                row[key] = _number(raw, key, line)
            if abs(row["bonn_pct"] - row["b_pct"] - row["diff"]) > 0.011:
                raise ValueError(f"line {line}: diff {row['diff']} is not bonn_pct − b_pct")
            low, high = _number(raw, "ci_low", line, True), _number(raw, "ci_high", line, True)
            if (low is None) != (high is None):
                raise ValueError(f"line {line}: give both ends of the interval or neither")
            if low is not None and not low - 0.011 <= row["diff"] <= high + 0.011:
                raise ValueError(f"line {line}: diff {row['diff']} lies outside its interval")
            row["ci_low"], row["ci_high"] = low, high
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


MIN_SEEDS = 3  # for an across-seeds row


def with_summaries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows in file order, each (group, epochs) block of MIN_SEEDS seeds or more followed by its across-seeds
    row."""
    blocks: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        blocks.setdefault((r["group"], r["epochs"]), []).append(r)
    out: list[dict[str, Any]] = []
    for (group, epochs), block in blocks.items():
        out.extend(block)
        if len(block) >= MIN_SEEDS:
            pairs = [{"n": 1, "acc_a": r["bonn_pct"], "acc_b": r["b_pct"], "diff": r["diff"]} for r in block]
            s = across_pairs(pairs)
            out.append({"group": group, "epochs": epochs, "seed": f"{len(block)} seeds", "summary": True,
                        "bonn_pct": s["acc_a"], "b_pct": s["acc_b"], "diff": s["diff"], "ci_low": s["ci_low"],
                        "ci_high": s["ci_high"], "p": s["p"], "source": f"t on {len(block) - 1} df across seeds"})
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| recipe | epochs | seed | BONN % | (b) % | BONN − (b) (95 % CI) | source |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "" if r["ci_low"] is None else f" ({r['ci_low']:+.2f} … {r['ci_high']:+.2f})"
        diff = f"{r['diff']:+.2f}{ci}" + (f", p {r['p']:.2g}" if r.get("summary") else "")
        if r.get("summary"):
            diff = f"**{diff}**"
        lines.append(f"| {r['group']} | {r['epochs']} | {r['seed']} | {r['bonn_pct']:.2f} | {r['b_pct']:.2f} | "
                     f"{diff} | {r['source']} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path, xlim: tuple[float, float] = (-4.0, 3.0)) -> None:
    """One line per row, top to bottom; differences beyond `xlim` sit at the edge, labelled with their value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 0.32 * len(rows) + 1.6))
    labels, y = [], len(rows)
    previous_group = None
    for r in rows:
        y -= 1
        if r["group"] != previous_group and previous_group is not None:
            ax.axhline(y + 0.5, color="0.85", lw=0.8)
        previous_group = r["group"]
        summary = r.get("summary", False)
        colour = "black" if summary else ("tab:blue" if r["group"].startswith("16") else "tab:purple")
        x = min(max(r["diff"], xlim[0] + 0.1), xlim[1] - 0.1)
        if r["ci_low"] is not None:
            ax.plot([max(r["ci_low"], xlim[0]), min(r["ci_high"], xlim[1])], [y, y], color=colour,
                    lw=2.2 if summary else 1.2)
        ax.plot(x, y, marker="D" if summary else "o", color=colour, ms=7 if summary else 5,
                mfc=colour if r["ci_low"] is not None else "white")
        if x != r["diff"]:
            ax.annotate(f"{r['diff']:+.2f}", (x, y), xytext=(6, -3), textcoords="offset points", fontsize=7)
        first = r["group"] if not summary else "    across seeds"
        labels.append(f"{first}, {r['epochs']} ep, " + (f"seed {r['seed']}" if not summary else r["seed"]))
    ax.axvline(0, color="0.5", lw=0.8)
    ax.axvline(TARGET_GAIN, color="tab:green", ls="--", lw=1, label=f"issue target +{TARGET_GAIN:g}")
    ax.axvline(PAPER_GAIN, color="tab:red", ls="--", lw=1, label=f"paper, 200 epochs: +{PAPER_GAIN}")
    ax.set_yticks(range(len(rows) - 1, -1, -1), labels, fontsize=7)
    ax.set_xlim(*xlim)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("BONN − (b), test accuracy points through the engine (open: no paired interval kept)")
    ax.set_title("Every BONN vs (b) pair on CIFAR-10 (◆ mean across seeds, t interval)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.forest", description=__doc__.split("\n")[0])
    p.add_argument("csv", type=Path, help="one row per BONN vs (b) pair (models/logs/bonn_vs_b.csv)")
    p.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    p.add_argument("--out", type=Path, help="write the markdown table here as well as to stdout")
    args = p.parse_args(argv)
    try:
        rows = with_summaries(read_pairs(args.csv))
    except (OSError, ValueError) as e:
        p.exit(2, f"python -m training.forest: {e}\n")
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
