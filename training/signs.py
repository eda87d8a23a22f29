"""How many latent signs did training change? `python -m training.signs CKPT [CKPT ...]`.

For each training checkpoint of a binary net: the fraction of its latent signs that differ from the seed's
initialisation (rebuilt from the checkpoint's config: `torch.manual_seed(seed)`, then the model, as the trainer
does) and from the previous checkpoint given, if it is of the same net. Per-layer rows with `--layers`.
A net whose signs barely moved trains around random binary projections (docs/method.md section 19).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .binarize import changed_fraction, latent_signs, scale_latent_init
from .models import build_model
from .summarize import emit
from .trainer import read_checkpoint


def load_net(path: Path) -> tuple[int, torch.nn.Module, torch.nn.Module | None]:
    """(epoch, trained net, the seed's initial net or None for a fine-tuning run, which started elsewhere)."""
    ckpt = read_checkpoint(path, str(path))
    cfg = ckpt["config"]
    if not cfg.get("binary", True):
        raise ValueError(f"{path}: a full-precision net has no latent signs")

    def fresh() -> torch.nn.Module:
        return build_model(cfg["arch"], binary=True, num_classes=int(cfg["num_classes"]),
                           dropout=float(cfg.get("dropout", 0.0)))

    net = fresh()
    net.load_state_dict(ckpt["model"])
    init = None
    if not cfg.get("init_from"):
        torch.manual_seed(int(cfg["seed"]))
        init = fresh()
        scale_latent_init(init, float(cfg.get("latent_init_scale", 1.0)))  # signs unchanged; as the trainer does
    return int(ckpt["epoch"]), net, init


def rows(paths: list[Path], per_layer: bool) -> list[dict]:
    out, prev = [], None
    for path in paths:
        epoch, net, init = load_net(path)
        signs = latent_signs(net)
        row = {"checkpoint": str(path), "epoch": epoch,
               "from_start": None if init is None else changed_fraction(latent_signs(init), signs),
               "from_previous": changed_fraction(prev, signs) if prev is not None and _same_net(prev, signs) else None}
        if per_layer and init is not None:
            row["layers"] = [changed_fraction([a], [b]) for a, b in zip(latent_signs(init), signs)]
        out.append(row)
        prev = signs
    return out


def _same_net(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return [t.shape for t in a] == [t.shape for t in b]


def table(rs: list[dict]) -> str:
    pct = lambda v: "–" if v is None else f"{100 * v:.2f} %"
    lines = ["| checkpoint | epoch | signs changed since the start | since the previous row |", "|---|---|---|---|"]
    lines += [f"| {r['checkpoint']} | {r['epoch']} | {pct(r['from_start'])} | {pct(r['from_previous'])} |" for r in rs]
    for r in rs:
        if "layers" in r:
            lines.append(f"\n{r['checkpoint']}, per binary layer since the start: "
                         + ", ".join(f"{100 * v:.1f}" for v in r["layers"]) + " %")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.signs", description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint.pt files of binary runs, oldest first")
    p.add_argument("--layers", action="store_true", help="also each binary layer's fraction since the start")
    p.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    try:
        text = table(rows(args.checkpoints, args.layers))
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"signs: {e}")
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
