"""training.margin: two runs compared at equal epochs, per window of epochs."""

from __future__ import annotations

import json

import pytest

from training.margin import epoch_accuracy, main, windows


def write_log(path, accs, extra=()):
    recs = [{"kind": "step", "epoch": 1, "ce": 2.0}]
    recs += [{"kind": "epoch", "epoch": e, "test_acc": a} for e, a in accs.items()]
    recs += list(extra)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_windows_use_common_epochs_only(tmp_path):
    a = epoch_accuracy(write_log(tmp_path / "a.jsonl", {e: 0.50 + 0.01 * e for e in range(1, 8)}))
    b = epoch_accuracy(write_log(tmp_path / "b.jsonl", {e: 0.52 for e in range(1, 6)}))  # 2 epochs behind
    rows = windows(a, b, 3)
    assert [(r["first"], r["last"], r["n"]) for r in rows] == [(1, 3, 3), (4, 5, 2), (1, 5, 5)]
    assert rows[0]["a"] == pytest.approx(52.0) and rows[0]["diff"] == pytest.approx(0.0)
    assert rows[1]["diff"] == pytest.approx(54.5 - 52.0)
    assert rows[2]["a_ahead"] == 3  # epochs 3, 4, 5 (epoch 2 ties)


def test_last_record_of_an_epoch_wins(tmp_path):
    # A run resumed from an earlier checkpoint writes its epochs again: the later record counts.
    path = write_log(tmp_path / "a.jsonl", {1: 0.1, 2: 0.2}, extra=[{"kind": "epoch", "epoch": 2, "test_acc": 0.3}])
    assert epoch_accuracy(path) == {1: 0.1, 2: 0.3}


def test_cli_reads_run_dirs_and_writes_markdown(tmp_path, capsys):
    for name, acc in (("bonn", 0.8), ("binary", 0.7), ("bonn_s0.1", 0.75)):
        (tmp_path / name).mkdir()
        write_log(tmp_path / name / "metrics.jsonl", {e: acc for e in range(1, 21)})
    out = tmp_path / "m.md"
    assert main([str(tmp_path / "bonn"), str(tmp_path / "binary"), "--names", "BONN", "(b)",
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| epochs | BONN % | (b) % | BONN − (b) |")
    assert lines[2] == "| 1-10 | 80.00 | 70.00 | +10.00 | 10/10 |"
    assert lines[-1] == "| 1-20 (all) | 80.00 | 70.00 | +10.00 | 20/20 |"
    assert out.read_text().count("\n") == 5
    # Two pairs are labelled by run name; a dot in a directory's name is not a file suffix.
    assert main([str(tmp_path / "bonn_s0.1"), str(tmp_path / "binary"), str(tmp_path / "bonn"),
                 str(tmp_path / "binary")]) == 0
    assert "bonn_s0.1 vs binary" in capsys.readouterr().out
    # Log files are labelled without their suffixes, `.train.jsonl` as models/logs/ names the copies.
    a = write_log(tmp_path / "bonn_s1.train.jsonl", {1: 0.5})
    b = write_log(tmp_path / "binary_s1.jsonl", {1: 0.4})
    assert main([str(a), str(b), str(a), str(b)]) == 0
    assert "bonn_s1 vs binary_s1\n" in capsys.readouterr().out


def test_clear_errors(tmp_path):
    a = write_log(tmp_path / "a.jsonl", {1: 0.5, 2: 0.5})
    b = write_log(tmp_path / "b.jsonl", {3: 0.5})
    with pytest.raises(SystemExit, match="share no finished epoch"):
        main([str(a), str(b)])
    with pytest.raises(SystemExit, match="no epoch with a test accuracy"):
        main([str(a), str(write_log(tmp_path / "c.jsonl", {}))])
    with pytest.raises(SystemExit, match="at least 1 epoch"):
        main([str(a), str(a), "--window", "0"])
    with pytest.raises(SystemExit, match="No such file"):
        main([str(a), str(tmp_path / "missing.jsonl")])


def test_pairs_give_one_table_each_and_a_plot(tmp_path, capsys):
    logs = [write_log(tmp_path / f"{n}.jsonl", {e: acc + 0.001 * e for e in range(1, 9)})
            for n, acc in (("bonn_s0", 0.8), ("bin_s0", 0.79), ("bonn_s1", 0.8), ("bin_s1", 0.81))]
    png = tmp_path / "m.png"
    assert main([str(p) for p in logs] + ["--window", "4", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "bonn_s0 vs bin_s0" in out and "bonn_s1 vs bin_s1" in out
    assert "| 1-8 (all) | 80.45 | 79.45 | +1.00 | 8/8 |" in out
    assert "| 1-8 (all) | 80.45 | 81.45 | -1.00 | 0/8 |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="in pairs"):
        main([str(logs[0])])


def test_plot_mean_line_only_for_seeds_of_one_variant(tmp_path, monkeypatch):
    import matplotlib.axes

    labels: list[str] = []
    original = matplotlib.axes.Axes.plot

    def recording_plot(self, *args, **kw):
        labels.append(kw.get("label", ""))
        return original(self, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording_plot)
    logs = [write_log(tmp_path / f"{n}.jsonl", {e: 0.8 + 0.001 * e for e in range(1, 5)})
            for n in ("k", "b", "k5", "b2")]
    assert main([str(p) for p in logs] + ["--plot", str(tmp_path / "seeds.png")]) == 0
    assert "mean of 2" in labels
    labels.clear()
    assert main([str(p) for p in logs] + ["--plot", str(tmp_path / "variants.png"), "--no-mean"]) == 0
    assert labels == ["k vs b", "k5 vs b2"]
