"""Write the model card (JSON + Markdown) of a finished run into models/, with the accuracy measured by
`bonn-serve eval` (engine for .bonn, onnxruntime for .onnx) on the full test split.

    python -m training.model_card --run runs/bonn_wrn22_16 --model models/bonn-wrn22-16.bonn \
        --eval-json runs/bonn_wrn22_16/eval_test.json --out models/bonn-wrn22-16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from statistics import median_high
from pathlib import Path
from typing import Any

from .trainer import milestone_epochs

STAGES = {"wrn22-16": "WRN-22, stages 16-16-32-64", "wrn22-64": "WRN-22, stages 64-64-128-256"}
# ICCV Table 3 / book Table 3.4 (CIFAR-10, 200 epochs). The paper has no lambda = theta = 0 run of the wide net
# (its XNOR-Net row, 88.52, is a different method), so that entry is None.
PAPER = {"wrn22-16": {"bonn": 87.34, "binary": 84.97, "fp": 91.66},
         "wrn22-64": {"bonn": 92.36, "binary": None, "fp": 94.96}}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


CPU_HOST = "a 2-core CPU"


def parse_epochs(spec: str) -> list[int]:
    """'1-15,123-180' -> [1, ..., 15, 123, ..., 180]"""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def _hosts(epochs: list[dict[str, Any]], remote: list[int], remote_host: str) -> list[dict[str, Any]]:
    """Epoch times per training host, for a run that moved between this CPU and a lent GPU (one median over
    both would describe neither). The host that ran the last epoch comes first: render_md reads the first
    host as the one whose PyTorch test figure the card quotes."""
    here = [r for r in epochs if r["epoch"] not in remote]
    there = [r for r in epochs if r["epoch"] in remote]
    order = [(CPU_HOST, here), (remote_host, there)]
    if epochs[-1]["epoch"] in remote:
        order.reverse()
    return [{"host": host, "epochs": _ranges([r["epoch"] for r in mine]),
             "epoch_time_s_median": median_high([r["epoch_time_s"] for r in mine])} for host, mine in order if mine]


def build_card(run: Path, model: Path, eval_json: Path, trained_on: str = CPU_HOST,
               remote_epochs: list[int] | None = None, remote_host: str = "an NVIDIA H200") -> dict[str, Any]:
    """`remote_epochs`: the epochs that ran on `remote_host` (the rest ran on this CPU); `trained_on` is then
    written from them."""
    cfg = json.loads((run / "config.json").read_text())
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in recs if r.get("kind") == "epoch"]
    ev = json.loads(eval_json.read_text())
    if ev["sha256"] != _sha256(model):
        raise SystemExit(f"{eval_json} was measured on a different file than {model}")
    # the card states *test* accuracy: only a measurement on the whole test split may supply it
    if ev.get("split") != "test" or "subset" in ev:
        what = f"the {ev.get('split')} split" if ev.get("split") != "test" else f"a {ev['n']}-image subset"
        raise SystemExit(f"{eval_json} measured {what}; a card needs `bonn-serve eval --split test` without --limit")
    last = epochs[-1]
    if remote_epochs is None and trained_on == CPU_HOST:  # logs since session 8 name each epoch's device
        remote_epochs = [r["epoch"] for r in epochs if r.get("device") == "cuda"]
    hosts = _hosts(epochs, remote_epochs, remote_host) if remote_epochs else None
    if hosts:
        trained_on = "; ".join(f"{h['host']} (epochs {h['epochs']})" for h in hosts)
    kind = "fp" if not cfg["binary"] else ("bonn" if cfg["lam"] > 0 or cfg["theta"] > 0 else "binary")
    stepped = cfg.get("lr_schedule", "cosine") == "step"  # runs older than the option were all cosine
    return {
        "name": model.stem,
        "file": model.name,
        "bytes": model.stat().st_size,
        "sha256": ev["sha256"],
        "arch": cfg["arch"],
        "binary": cfg["binary"],
        "method": {"bonn": "BONN (Bayesian kernel + feature losses)", "binary": "binary, lambda = theta = 0",
                   "fp": "full precision"}[kind],
        "data": {"dataset": "CIFAR-10",
                 # images the net trained on: a val_size hold-out is taken from them (docs/method.md 12)
                 "train_images": (50000 if cfg.get("limit_train") is None else cfg["limit_train"])
                 - int(cfg.get("val_size") or 0),
                 "test_images": ev["n"], "split_evaluated": ev["split"],
                 "source": ev.get("data_dir") or "/work/shared/data/cifar10", **_data_note(ev.get("data_dir"))},
        "training": {"epochs": last["epoch"], "steps": last["step"], "config": cfg, "trained_on": trained_on,
                     # epochs at which the cosine reached 0: more than one means the run was continued with
                     # `--resume --epochs N`, which re-enters a longer cosine (docs/method.md)
                     "cosine_ends": [] if stepped else
                     [r["epoch"] for r in epochs if r.get("lr_end", 1.0) <= 1e-12],
                     "lr_schedule": [] if stepped else lr_segments(epochs, float(cfg["lr"])),
                     **({"lr_steps": {"gamma": cfg["lr_gamma"], "after_epochs":
                                      milestone_epochs(cfg["lr_milestones"], int(cfg["epochs"]))}}
                        if stepped else {}),
                     "feature_loss_epochs": [r["epoch"] for r in epochs if r.get("feature_on")],
                     "epoch_time_s_median": hosts[0]["epoch_time_s_median"] if hosts
                     else median_high(r["epoch_time_s"] for r in epochs),
                     **({"hosts": hosts} if hosts else {})},
        "accuracy": {"test_top1": ev["accuracy"], "measured_with": ev["runtime"],
                     "correct": ev["correct"], "n": ev["n"],
                     "torch_test_top1_last_epoch": last["test_acc"],
                     "per_class": ev["per_class_accuracy"]},
        "paper_cifar10_top1_200_epochs": PAPER.get(cfg["arch"], {}).get(kind),
        "latent_weight_bimodality_bc": last.get("bc_mean"),
    }


def _data_note(data_dir: str | None) -> dict[str, str]:
    """Say so when the evaluated copy is the JPEG re-encoded one (its manifest.json says), not the original."""
    manifest = Path(data_dir or "/work/shared/data/cifar10") / "manifest.json"
    try:
        jpeg = "jpeg" in manifest.read_text().lower()
    except OSError:
        return {}
    return {"note": "the JPEG q75 re-encoded copy of CIFAR-10 (see its manifest.json)"} if jpeg else {}


def lr_segments(epochs: list[dict[str, Any]], lr: float) -> list[dict[str, int]]:
    """The cosine each epoch was trained on, read back from its end-of-epoch lr: [{first, last, cosine}, ...].
    After epoch e of a T-epoch cosine the lr factor is f = (1 + cos(pi e / T)) / 2, so T = pi e / acos(2f - 1).
    More than one segment means the schedule was changed on resume (`--resume --epochs N`): a warm restart
    after a finished cosine, a shortened cosine that anneals a long run early, or `--time-budget`'s plan."""
    segs: list[dict[str, int]] = []
    for r in epochs:
        if "lr_end" not in r or lr <= 0:
            return []  # runs older than the lr_end record
        f = min(max(r["lr_end"] / lr, 0.0), 1.0)
        length = r["epoch"] if f <= 1e-12 else round(math.pi * r["epoch"] / max(math.acos(2 * f - 1), 1e-12))
        if segs and segs[-1]["cosine"] == length and segs[-1]["last"] == r["epoch"] - 1:
            segs[-1]["last"] = r["epoch"]
        else:
            segs.append({"first": r["epoch"], "last": r["epoch"], "cosine": length})
    return segs


def _ranges(epochs: list[int]) -> str:
    """[9, 10, 23, 24, 25] -> '9-10, 23-25'"""
    out: list[list[int]] = []
    for e in epochs:
        if out and e == out[-1][1] + 1:
            out[-1][1] = e
        else:
            out.append([e, e])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out) or "none"


def _prior_update(cfg: dict) -> str:
    # older runs predate the option and used the network's optimizer
    mode = cfg.get("prior_update", "optimizer")
    if mode == "closed_form":
        return "refit to the weights after every step"
    return "stepped by plain SGD" if mode == "sgd" else f"stepped by the network's {cfg['optimizer']}"


def _schedule(ends: list[int], segments: list[dict[str, int]] | None = None) -> str:
    if segments and len(segments) > 1:
        parts = ", ".join(f"epochs {s['first']}-{s['last']} on a {s['cosine']}-epoch cosine" for s in segments)
        restarts = (f"; the lr reached 0 at epochs {', '.join(map(str, ends))} (warm restarts)"
                    if len(ends) > 1 else "")
        return f"cosine ({parts}: the schedule was changed with `--resume --epochs N`{restarts})"
    if len(ends) <= 1:
        return "cosine to 0"
    # each `--resume --epochs N` re-enters a longer cosine at the lr it has there (a warm restart)
    return (f"cosine, continued with `--resume --epochs N` (warm restarts); the lr reached 0 at epochs "
            f"{', '.join(map(str, ends))}")


def _steps(steps: dict[str, Any]) -> str:
    """'x0.2 after epochs 60, 120, 160' (the WRN recipe's step schedule)"""
    return f"x{steps['gamma']:g} after epochs {', '.join(map(str, steps['after_epochs']))}"


def _duration(seconds: float, host: str) -> str:
    # minutes on this CPU, seconds on a GPU
    return f"{seconds / 60:.1f} min" if host.startswith(CPU_HOST) else f"{seconds:.1f} s"


def _epoch_times(tr: dict[str, Any], host: str, here: bool, threads: int) -> str:
    """'2.7 min on a 2-core CPU (epochs 16-122); 8.4 s on an NVIDIA H200 (epochs 1-15); 1 torch thread(s)'"""
    if tr.get("hosts"):
        per_host = "; ".join(f"{_duration(h['epoch_time_s_median'], h['host'])} on {h['host']} "
                             f"(epochs {h['epochs']})" for h in tr["hosts"])
        return f"{per_host}; {threads} torch thread(s)"
    one = f"{_duration(tr['epoch_time_s_median'], host)} on {host}"
    return f"{one}, {threads} torch thread(s)" if here else one


def render_md(card: dict[str, Any]) -> str:
    acc = card["accuracy"]
    tr = card["training"]
    cfg = tr["config"]
    host = tr.get("trained_on", CPU_HOST)
    # a host text that starts with this CPU ("a 2-core CPU (epochs 35-108; 1-34 on a GPU)") ended here
    here = host.startswith(CPU_HOST)
    # a remote training host sees its own copy of the test set (gpu_sweep.py re-encodes it for the upload)
    torch_where = "" if here else " (there, on its JPEG re-encoded test copy)"
    paper = card["paper_cifar10_top1_200_epochs"]
    paper = f"{paper:.2f}%" if paper is not None else "no run of this variant at this width"
    lines = [
        f"# {card['name']}",
        "",
        f"- **Model**: {card['method']}, arch `{card['arch']}` ({STAGES.get(card['arch'], '')})",
        f"- **File**: `{card['file']}`, {card['bytes']:,} bytes, sha256 `{card['sha256']}`",
        f"- **Data**: CIFAR-10, {card['data']['train_images']:,} training images; evaluated on the "
        f"{acc['n']:,} {card['data']['split_evaluated']} images",
        f"- **Test accuracy (top-1)**: **{100 * acc['test_top1']:.2f}%**, "
        f"measured with {acc['measured_with']} "
        f"(`bonn-serve eval`); PyTorch after the last epoch{torch_where}: "
        f"{100 * acc['torch_test_top1_last_epoch']:.2f}%",
        f"- **Paper** (200 epochs, GPU): {paper}",
        f"- **Training**: {tr['epochs']} epochs ({tr['steps']} steps), {cfg['optimizer'].upper()} "
        f"lr {cfg['lr']} "
        f"{_steps(tr['lr_steps']) if 'lr_steps' in tr else _schedule(tr['cosine_ends'], tr.get('lr_schedule'))}, "
        + (f"momentum {cfg['momentum']}, " if cfg["optimizer"] == "sgd" else "")
        + f"batch {cfg['batch_size']}, "
        + f"weight decay {cfg['weight_decay']} (real-valued conv/FC"
        + (f"; {cfg['latent_weight_decay']} on the latent binary weights), " if cfg.get("latent_weight_decay")
           else " only), ")
        + f"seed {cfg['seed']}"
        + (f"; lambda {cfg['lam']}, nu {cfg['nu']}, theta {cfg['theta']}, prior mu/sigma "
           f"{_prior_update(cfg)} (feature loss in the last "
           f"{100 * cfg['feature_fraction']:.0f}% of {'the run' if 'lr_steps' in tr else 'each cosine'}: epochs "
           f"{_ranges(tr['feature_loss_epochs'])})" if card["binary"] else ""),
        f"- **Epoch time**: median {_epoch_times(tr, host, here, cfg.get('threads', 1))}"
        + (", torch.compile" if cfg.get("compile") else "")
        + (", bfloat16 binary convolutions" if cfg.get("binary_conv_dtype") == "bfloat16" else ""),
        "",
        (f"The paper's budget: 200 epochs on one {'step schedule' if 'lr_steps' in tr else 'cosine'}. "
         "Differences from the paper's setting (optimizer, data, Bayesian-loss weights) are in docs/method.md; "
         "the comparison is in docs/results.md."
         if tr["epochs"] >= 200 and len(tr.get("lr_schedule") or [1]) == 1 else
         "Short schedule: far fewer epochs than the paper's 200, so the accuracy is not comparable to the "
         "paper's number; see docs/results.md and docs/method.md."),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--eval-json", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="prefix: writes PREFIX.card.json, PREFIX.md")
    p.add_argument("--trained-on", default=CPU_HOST, help="the training host, in words; start with "
                   f"'{CPU_HOST}' when the last epochs ran on this machine")
    p.add_argument("--remote-epochs", type=parse_epochs, default=None,
                   help="epochs that ran on --remote-host, e.g. 1-15,123-180 (the rest ran here)")
    p.add_argument("--remote-host", default="an NVIDIA H200", help="the lent GPU host, in words")
    args = p.parse_args(argv)
    card = build_card(args.run, args.model, args.eval_json, args.trained_on, args.remote_epochs, args.remote_host)
    Path(f"{args.out}.card.json").write_text(json.dumps(card, indent=2) + "\n")
    Path(f"{args.out}.md").write_text(render_md(card))
    summary = {k: card[k] for k in ("name", "bytes", "sha256")}
    print(json.dumps(summary | {"acc": card["accuracy"]["test_top1"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
