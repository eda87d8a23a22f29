"""The held-out validation set: class-balanced, disjoint from what is trained on, the same for every run."""

from __future__ import annotations

import json

import pytest
import torch

from training.data import Split, hold_out
from training.trainer import Trainer, make_config

from _data import CIFAR_DIR as DATA  # noqa: E402

needs_mini = pytest.mark.skipif(not (DATA / "cifar10_mini.npz").exists(), reason="cifar10_mini.npz not available")


def numbered_split(n: int, classes: int = 10) -> Split:
    """Image i carries its own index in its pixels, so a split's images can be identified."""
    ids = torch.arange(n)
    x = torch.stack([ids // 256, ids % 256, torch.zeros_like(ids)], 1).to(torch.uint8)
    return Split(x.view(n, 3, 1, 1).expand(n, 3, 2, 2).contiguous(), ids % classes)


def ids(split: Split) -> list[int]:
    return (split.x[:, 0, 0, 0].long() * 256 + split.x[:, 1, 0, 0].long()).tolist()


def test_hold_out_is_balanced_disjoint_and_complete():
    full = numbered_split(1000)
    rest, val = hold_out(full, 103)
    assert len(val) == 103 and len(rest) == 897
    assert torch.bincount(val.y, minlength=10).tolist() == [11, 11, 11, 10, 10, 10, 10, 10, 10, 10]
    assert not set(ids(rest)) & set(ids(val))
    assert sorted(ids(rest) + ids(val)) == list(range(1000))
    for s in (rest, val):  # labels still travel with their images
        assert all(i % 10 == int(y) for i, y in zip(ids(s), s.y))


def test_hold_out_is_fixed_whatever_the_run_seed():
    full = numbered_split(500)
    torch.manual_seed(1)
    a = ids(hold_out(full, 50)[1])
    torch.manual_seed(2)
    b = ids(hold_out(full, 50)[1])
    assert a == b
    # a larger validation set does not shuffle the smaller one's members away
    assert set(a) <= set(ids(hold_out(full, 100)[1]))


def test_hold_out_zero_and_too_large():
    full = numbered_split(100)
    rest, val = hold_out(full, 0)
    assert rest is full and len(val) == 0
    with pytest.raises(ValueError, match="too large"):
        hold_out(full, 100)
    unbalanced = Split(full.x, torch.zeros(100, dtype=torch.long))  # every image in class 0
    with pytest.raises(ValueError, match="per-class counts"):
        hold_out(unbalanced, 20)


def test_val_size_is_validated():
    with pytest.raises(ValueError, match="val_size"):
        make_config({"val_size": -1})
    assert make_config({"val_size": "500"})["val_size"] == 500


@needs_mini
def test_trainer_logs_validation_metrics_and_refuses_a_mismatched_resume(tmp_path):
    torch.set_num_threads(1)
    cfg = make_config(dict(name="v", epochs=1, batch_size=32, limit_train=192, limit_test=64, layout="mini",
                           val_size=60, log_every=2, eval_batch=64, export=False, channels_last=False))
    tr = Trainer(cfg, str(DATA), tmp_path / "run")
    assert len(tr.train) == 132 and len(tr.val) == 60 and tr.steps_per_epoch == 4
    last = tr.fit(progress=False, plot=False)
    assert 0 <= last["val_acc"] <= 1 and last["val_loss"] > 0 and 0 <= last["test_acc"] <= 1
    recs = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("val_acc" in r for r in recs if r["kind"] in ("init", "epoch"))
    # resuming with another validation set would train on other images: refused
    other = Trainer(make_config({**cfg, "val_size": 0}), str(DATA), tmp_path / "run")
    with pytest.raises(ValueError, match="val_size"):
        other.resume(tmp_path / "run" / "checkpoint.pt")


def write_run(path, seed, lam, val_acc, test_acc):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(make_config({"name": path.name, "seed": seed, "lam": lam,
                                                              "val_size": 5000})))
    recs = [{"kind": "epoch", "epoch": e, "val_acc": val_acc - 0.1 * (2 - e), "test_acc": test_acc,
             "bc_mean": 0.2} for e in (1, 2)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_summarize_groups_seeds_and_ranks_by_validation(tmp_path, capsys):
    from training.summarize import main

    write_run(tmp_path / "a0", 0, 1e-4, 0.70, 0.90)  # best test, worst validation: must rank last
    write_run(tmp_path / "b0", 0, 1e-5, 0.80, 0.60)
    write_run(tmp_path / "b1", 1, 1e-5, 0.82, 0.62)
    assert main([str(p) for p in sorted(tmp_path.iterdir())] + ["--out", str(tmp_path / "t.md")]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| lam")]
    assert rows[0].startswith("| lam=1e-05 | 0, 1 | 2 | 81.00 ± 1.41 | 61.00 ± 1.41 | – | 0.200 |")
    assert rows[1].startswith("| lam=0.0001 | 0 | 2 | 70.00 | 90.00 |")
    assert (tmp_path / "t.md").read_text().count("\n") == 4
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit, match="no finished epoch"):
        main([str(tmp_path / "empty")])


def test_summarize_reads_the_log_copies_in_models_logs(tmp_path, capsys):
    """`X.train.jsonl` next to `X.config.json` and `X.eval.json` (as models/logs/ keeps them) is a run too, with
    its engine accuracy; a config copy that is missing is a clear error."""
    from training.summarize import main

    for name, seed, test_acc, engine_acc in (("bonn_s0", 0, 0.80, 0.8012), ("bonn_s1", 1, 0.82, 0.8188)):
        write_run(tmp_path / name, seed, 1e-5, 0.5, test_acc)
        for src, dst in (("config.json", "config.json"), ("metrics.jsonl", "train.jsonl")):
            (tmp_path / f"{name}.{dst}").write_text((tmp_path / name / src).read_text())
        (tmp_path / f"{name}.eval.json").write_text(json.dumps({"accuracy": engine_acc}))
    assert main([str(tmp_path / "bonn_s0.train.jsonl"), str(tmp_path / "bonn_s1.train.jsonl")]) == 0
    row = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| all runs")]
    assert row == ["| all runs | 0, 1 | 2 | 50.00 ± 0.00 | 81.00 ± 1.41 | 81.00 ± 1.24 | 0.200 |"]
    (tmp_path / "bonn_s1.config.json").unlink()
    with pytest.raises(SystemExit, match="bonn_s1.config.json"):
        main([str(tmp_path / "bonn_s1.train.jsonl")])
