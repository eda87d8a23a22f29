"""Model cards are built from the run's own logs and the engine/onnxruntime evaluation of the shipped file."""

from __future__ import annotations

import hashlib
import json

import pytest

from training.model_card import build_card, parse_epochs, render_md
from training.trainer import cosine_factor, make_config


def _fake_run(tmp_path, lr_ends, feature_on, **cfg_extra):
    run = tmp_path / "run"
    run.mkdir()
    cfg = make_config(dict(name="bonn_x", optimizer="adam", lr=2e-3, epochs=len(lr_ends), **cfg_extra))
    (run / "config.json").write_text(json.dumps(cfg))
    recs = [{"kind": "init", "epoch": 0, "test_acc": 0.1}]
    for i, (lr_end, fon) in enumerate(zip(lr_ends, feature_on), start=1):
        recs.append({"kind": "epoch", "epoch": i, "step": 10 * i, "epoch_time_s": 60.0 + i, "lr_end": lr_end,
                     "feature_on": fon, "test_acc": 0.5 + i / 100, "bc_mean": 0.36})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    model = tmp_path / "m.bonn"
    model.write_bytes(b"packed model bytes")
    ev = {"sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "accuracy": 0.5432, "runtime": "engine",
          "correct": 5432, "n": 10000, "split": "test", "per_class_accuracy": [0.5] * 10}
    (tmp_path / "eval.json").write_text(json.dumps(ev))
    return run, model, tmp_path / "eval.json"


def test_card_records_a_continued_schedule_and_feature_epochs(tmp_path):
    # 4-epoch cosine, then continued to 6: the lr reaches 0 at epochs 4 and 6
    lr_ends = [2e-3 * cosine_factor(e, 4) for e in range(1, 5)] + [2e-3 * cosine_factor(e, 6) for e in (5, 6)]
    run, model, ev = _fake_run(tmp_path, lr_ends, [False, False, False, True, False, True])
    card = build_card(run, model, ev)
    assert card["training"]["epochs"] == 6 and card["training"]["cosine_ends"] == [4, 6]
    assert card["training"]["lr_schedule"] == [{"first": 1, "last": 4, "cosine": 4},
                                               {"first": 5, "last": 6, "cosine": 6}]
    assert card["training"]["feature_loss_epochs"] == [4, 6]
    assert card["accuracy"]["test_top1"] == 0.5432 and card["bytes"] == len(b"packed model bytes")
    md = render_md(card)
    assert "54.32%" in md and "reached 0 at epochs 4, 6" in md and "epochs 4, 6" in md


def test_card_for_one_cosine_and_a_mismatched_evaluation(tmp_path):
    run, model, ev = _fake_run(tmp_path, [1e-3, 0.0], [False, True])
    md = render_md(build_card(run, model, ev))
    assert "cosine to 0," in md and "continued" not in md and "epochs 2)" in md
    model.write_bytes(b"another file")
    with pytest.raises(SystemExit, match="different file"):
        build_card(run, model, ev)


def test_card_names_a_remote_training_host(tmp_path):
    run, model, ev = _fake_run(tmp_path, [1e-3, 0.0], [False, True])
    md = render_md(build_card(run, model, ev))
    assert "min on a 2-core CPU" in md and "re-encoded" not in md and "bfloat16" not in md
    card = build_card(run, model, ev, trained_on="an NVIDIA H200")
    assert card["training"]["trained_on"] == "an NVIDIA H200"
    md = render_md(card)
    # seconds, not minutes, and the torch figure is flagged as measured on the host's test copy
    assert "median 62.0 s on an NVIDIA H200" in md and "re-encoded test copy" in md
    # begun on a GPU, finished here: minutes, and the torch figure is this machine's
    md = render_md(build_card(run, model, ev, trained_on="a 2-core CPU (epochs 2-9; epoch 1 on an NVIDIA H200)"))
    assert "min on a 2-core CPU (epochs 2-9; epoch 1 on an NVIDIA H200)" in md and "re-encoded" not in md


def test_card_reads_a_shortened_schedule_back_from_the_lr(tmp_path):
    # a long run annealed early: 8 epochs of a 20-epoch cosine, then resumed with --epochs 11 (the lr drops
    # onto the tail of an 11-epoch cosine and reaches 0 at epoch 11)
    lr_ends = [2e-3 * cosine_factor(e, 20) for e in range(1, 9)] + [2e-3 * cosine_factor(e, 11) for e in (9, 10, 11)]
    run, model, ev = _fake_run(tmp_path, lr_ends, [False] * 8 + [True] * 3)
    card = build_card(run, model, ev)
    assert card["training"]["lr_schedule"] == [{"first": 1, "last": 8, "cosine": 20},
                                               {"first": 9, "last": 11, "cosine": 11}]
    assert card["training"]["cosine_ends"] == [11]
    md = render_md(card)
    assert "epochs 1-8 on a 20-epoch cosine, epochs 9-11 on a 11-epoch cosine" in md


def test_card_says_when_the_binary_convolutions_trained_in_bfloat16(tmp_path):
    run, model, ev = _fake_run(tmp_path, [1e-3, 0.0], [False, True], binary_conv_dtype="bfloat16")
    assert "bfloat16 binary convolutions" in render_md(build_card(run, model, ev))


def test_card_gives_each_host_its_own_epoch_time(tmp_path):
    """A campaign that moved between a lent GPU and this CPU: one median over both would describe neither."""
    run, model, ev = _fake_run(tmp_path, [1e-3] * 5 + [0.0], [False] * 6)
    card = build_card(run, model, ev, remote_epochs=parse_epochs("1-2,4"), remote_host="an NVIDIA H200")
    hosts = card["training"]["hosts"]
    assert [h["host"] for h in hosts] == ["a 2-core CPU", "an NVIDIA H200"]  # the last epoch ran here
    assert hosts[0]["epochs"] == "3, 5-6" and hosts[0]["epoch_time_s_median"] == 65.0
    assert hosts[1]["epochs"] == "1-2, 4" and hosts[1]["epoch_time_s_median"] == 62.0
    assert card["training"]["trained_on"] == "a 2-core CPU (epochs 3, 5-6); an NVIDIA H200 (epochs 1-2, 4)"
    md = render_md(card)
    assert "median 1.1 min on a 2-core CPU (epochs 3, 5-6); 62.0 s on an NVIDIA H200 (epochs 1-2, 4)" in md
    assert "re-encoded" not in md  # the last epoch's torch figure is this machine's
    # ended on the GPU: the GPU comes first and the torch figure is flagged
    card = build_card(run, model, ev, remote_epochs=parse_epochs("5-6"))
    assert card["training"]["trained_on"].startswith("an NVIDIA H200 (epochs 5-6)")
    assert "re-encoded test copy" in render_md(card)


def test_card_says_when_the_budget_is_the_papers(tmp_path):
    import math
    n = 200
    lr_ends = [2e-3 * (1 + math.cos(math.pi * e / n)) / 2 for e in range(1, n + 1)]
    run, model, ev = _fake_run(tmp_path, lr_ends, [False] * n)
    md = render_md(build_card(run, model, ev))
    assert "The paper's budget: 200 epochs" in md and "Short schedule" not in md
    short = tmp_path / "short"
    short.mkdir()
    run, model, ev = _fake_run(short, lr_ends[:10], [False] * 10)
    assert "Short schedule" in render_md(build_card(run, model, ev))


def test_card_reads_each_epochs_device_from_the_log(tmp_path):
    """Logs since session 8 name the device of every epoch, so a moved run needs no --remote-epochs."""
    run, model, ev = _fake_run(tmp_path, [1e-3] * 3 + [0.0], [False] * 4)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in recs[1:]:
        r["device"] = "cuda" if r["epoch"] <= 2 else "cpu"
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    card = build_card(run, model, ev)
    assert card["training"]["trained_on"] == "a 2-core CPU (epochs 3-4); an NVIDIA H200 (epochs 1-2)"


@pytest.mark.parametrize("arch, lam, theta, paper", [("wrn22-16", 1e-5, 1e-2, 87.34), ("wrn22-64", 1e-5, 1e-2, 92.36),
                                                      ("wrn22-16", 0.0, 0.0, 84.97), ("wrn22-64", 0.0, 0.0, None)])
def test_card_quotes_the_papers_number_for_its_width(tmp_path, arch, lam, theta, paper):
    """The wide net has its own paper numbers; the paper ran no lambda = theta = 0 net at that width."""
    run, model, ev = _fake_run(tmp_path, [1e-3, 0.0], [False, True], arch=arch, lam=lam, theta=theta)
    card = build_card(run, model, ev)
    assert card["paper_cifar10_top1_200_epochs"] == paper
    md = render_md(card)
    assert (f"{paper:.2f}%" if paper else "no run of this variant at this width") in md


def test_card_states_a_step_schedule(tmp_path):
    run, model, ev = _fake_run(tmp_path, [2e-3, 4e-4, 4e-4, 8e-5], [False, False, True, True],
                               lr_schedule="step", lr_milestones=[0.25, 0.75])
    card = build_card(run, model, ev)
    assert card["training"]["lr_steps"] == {"gamma": 0.2, "after_epochs": [1, 3]}
    assert card["training"]["cosine_ends"] == [] and card["training"]["lr_schedule"] == []
    md = render_md(card)
    assert "x0.2 after epochs 1, 3," in md and "cosine" not in md and "last 25% of the run" in md



@pytest.mark.parametrize("edit, words", [({"split": "train"}, "the train split"),
                                         ({"subset": "class-balanced", "n": 500}, "a 500-image subset")])
def test_card_takes_its_accuracy_only_from_the_whole_test_split(tmp_path, edit, words):
    """A card headlines *test* accuracy: an evaluation of the training split or a --limit subset cannot be it."""
    run, model, ev = _fake_run(tmp_path, [1e-3, 0.0], [False, True])
    ev.write_text(json.dumps({**json.loads(ev.read_text()), **edit}))
    with pytest.raises(SystemExit, match=words):
        build_card(run, model, ev)


def test_card_counts_the_training_images_after_the_hold_out(tmp_path):
    run, model, ev = _fake_run(tmp_path, [1e-3, 0.0], [False, True], val_size=5000)
    ev.write_text(json.dumps({**json.loads(ev.read_text()), "data_dir": "/data/cifar-10-batches-py"}))
    card = build_card(run, model, ev)
    assert card["data"]["train_images"] == 45000
    assert card["data"]["source"] == "/data/cifar-10-batches-py" and "note" not in card["data"]
