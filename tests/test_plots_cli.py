"""`python -m training.plots`: a comparison plot from run dirs, and a clear error for a dir without a log."""

from __future__ import annotations

import json

import pytest

from training.plots import main


def _run(path, accs):
    path.mkdir()
    recs = [{"kind": "epoch", "epoch": i, "test_acc": a, "bc_mean": 0.2} for i, a in enumerate(accs, start=1)]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return str(path)


def test_compare_writes_one_png(tmp_path, capsys):
    a, b = _run(tmp_path / "a", [0.5, 0.6]), _run(tmp_path / "b", [0.4, 0.55])
    out = tmp_path / "cmp.png"
    assert main([a, b, "--compare", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_dir_without_metrics_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2 and "no metrics.jsonl" in capsys.readouterr().err


def test_compare_draws_train_accuracy_and_takes_full_precision_runs(tmp_path, monkeypatch):
    """Each run gets a solid test and a dashed train curve; an FP log (no bc_mean) and an init record (no
    train_acc) are fine."""
    import matplotlib.figure

    from training.plots import plot_compare

    binary = _run(tmp_path / "binary", [0.5, 0.6])
    fp = tmp_path / "fp"
    fp.mkdir()
    recs = [{"kind": "init", "epoch": 0, "test_acc": 0.1}] + [
        {"kind": "epoch", "epoch": i, "test_acc": a, "train_acc": a + 0.1} for i, a in ((1, 0.6), (2, 0.7))]
    (fp / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    seen = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (seen.append(fig), real_savefig(fig, *a, **k))[1])
    plot_compare([binary, fp], tmp_path / "cmp.png")
    acc_ax, bc_ax = seen[0].axes
    styles = [(ln.get_linestyle(), list(ln.get_xdata())) for ln in acc_ax.lines]
    # binary: a test curve only (its records carry no train_acc);
    # fp: a test curve that includes the init record, and a train curve
    assert styles == [("-", [1, 2]), ("-", [0, 1, 2]), ("--", [1, 2])]
    assert list(acc_ax.lines[2].get_ydata()) == pytest.approx([70.0, 80.0])
    assert len([ln for ln in bc_ax.lines if ln.get_label() in ("binary", "fp")]) == 1  # FP has no bimodality
