"""A table of finished runs, grouped by configuration over seeds: `python -m training.summarize RUN_DIR...`.

Runs whose configs differ only in seed and name form one row (mean ± sample std over the seeds). Rows are
ranked by validation accuracy when the runs hold a validation set out (`val_size`), so a sweep is decided on
held-out training images; test accuracy is reported next to it, never used to rank.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from .plots import epoch_records, metrics_file, read_metrics, run_label

# Keys that do not change what is trained (or only the seed): runs differing in these are repeats.
IGNORED = {"name", "seed", "threads", "device", "compile", "log_every", "eval_batch", "export", "layout",
           "hist_layers"}


def run_files(run: Path) -> tuple[Path, Path, Path]:
    """(metrics log, config, engine evaluation) of a run directory, or of a log copy in models/logs/:
    `X.train.jsonl` next to `X.config.json` and `X.eval.json`."""
    if run.is_dir():
        return metrics_file(run), run / "config.json", run / "eval_test.json"
    stem = run_label(run)
    return run, run.with_name(f"{stem}.config.json"), run.with_name(f"{stem}.eval.json")


def last_epoch(metrics: Path) -> dict[str, Any]:
    epochs = epoch_records(read_metrics(metrics))
    if not epochs:
        raise ValueError(f"{metrics}: no finished epoch")
    return epochs[-1]


def group_runs(runs_in: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """{configuration label: [one record per run]}; the label lists what differs between the groups."""
    runs = []
    for run in runs_in:
        metrics, config, engine = run_files(run)
        cfg = json.loads(config.read_text())
        rec = dict(last_epoch(metrics), run=run_label(run), seed=cfg.get("seed"))
        # `engine` is written by `bonn-serve eval --json` (accuracy through the engine)
        if engine.exists():
            rec["engine_acc"] = json.loads(engine.read_text()).get("accuracy")
        runs.append(({k: v for k, v in cfg.items() if k not in IGNORED}, rec))
    varying = sorted({k for c, _ in runs for k in c if len({json.dumps(c2.get(k)) for c2, _ in runs}) > 1})
    groups: dict[str, list[dict[str, Any]]] = {}
    for cfg, rec in runs:
        label = ", ".join(f"{k}={cfg.get(k)}" for k in varying) or "all runs"
        groups.setdefault(label, []).append(rec)
    return groups


def mean_sd(values: list[float]) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(groups: dict[str, list[dict[str, Any]]]) -> str:
    def key(item: tuple[str, list[dict[str, Any]]]) -> float:
        accs = [r.get("val_acc") for r in item[1] if r.get("val_acc") is not None]
        return -statistics.mean(accs) if accs else 0.0

    lines = ["| configuration | seeds | epochs | validation % | test % (torch) | test % (engine) | Sarle BC |",
             "|---|---|---|---|---|---|---|"]
    for label, recs in sorted(groups.items(), key=key):
        epochs = sorted({r["epoch"] for r in recs})
        bc = [r["bc_mean"] for r in recs if "bc_mean" in r]
        bc_text = f"{statistics.mean(bc):.3f}" if bc else "–"
        lines.append(f"| {label} | {', '.join(str(r['seed']) for r in recs)} | {'/'.join(map(str, epochs))} | "
                     f"{mean_sd([r.get('val_acc') for r in recs])} | {mean_sd([r['test_acc'] for r in recs])} | "
                     f"{mean_sd([r.get('engine_acc') for r in recs])} | {bc_text} |")
    return "\n".join(lines)


def emit(text: str, out: Path | None) -> None:
    """Print a markdown table, and write it to `out` when given."""
    print(text)
    if out:
        out.write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.summarize", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path,
                   help="run directories (config.json + metrics.jsonl, eval_test.json if evaluated) or log copies "
                        "X.train.jsonl (next to X.config.json, X.eval.json)")
    p.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    try:
        text = table(group_runs(args.runs))
    except (OSError, ValueError) as e:
        raise SystemExit(f"summarize: {e}")
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
