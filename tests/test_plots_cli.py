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
    from training.plots import plot_compare

    binary = _run(tmp_path / "binary", [0.5, 0.6])
    fp = tmp_path / "fp"
    fp.mkdir()
    recs = [{"kind": "init", "epoch": 0, "test_acc": 0.1}] + [
        {"kind": "epoch", "epoch": i, "test_acc": a, "train_acc": a + 0.1} for i, a in ((1, 0.6), (2, 0.7))]
    (fp / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    seen = _capture_figures(monkeypatch)
    plot_compare([binary, fp], tmp_path / "cmp.png")
    acc_ax, bc_ax = seen[0].axes
    styles = [(ln.get_linestyle(), list(ln.get_xdata())) for ln in acc_ax.lines]
    # binary: a test curve only (its records carry no train_acc);
    # fp: a test curve that includes the init record, and a train curve
    assert styles == [("-", [1, 2]), ("-", [0, 1, 2]), ("--", [1, 2])]
    assert list(acc_ax.lines[2].get_ydata()) == pytest.approx([70.0, 80.0])
    assert len([ln for ln in bc_ax.lines if ln.get_label() in ("binary", "fp")]) == 1  # FP has no bimodality


def _capture_figures(monkeypatch):
    import matplotlib.figure

    seen = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (seen.append(fig), real_savefig(fig, *a, **k))[1])
    return seen


def test_compare_takes_log_files_and_draws_a_resumed_run_once_per_epoch(tmp_path, monkeypatch):
    """The committed log copies (`X.train.jsonl`) compare like run dirs, labelled `X`; a run resumed from
    epoch 1 logged epoch 2 twice, and the later record is the one drawn."""
    run_dir = _run(tmp_path / "binary_s0", [0.5, 0.6])
    log = tmp_path / "bonn_s0.train.jsonl"
    recs = [{"kind": "epoch", "epoch": 1, "test_acc": 0.5}, {"kind": "epoch", "epoch": 2, "test_acc": 0.1},
            {"kind": "epoch", "epoch": 2, "test_acc": 0.62}, {"kind": "epoch", "epoch": 3, "test_acc": 0.7}]
    log.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    seen = _capture_figures(monkeypatch)
    out = tmp_path / "cmp.png"
    assert main([run_dir, str(log), "--compare", str(out)]) == 0
    acc_ax = seen[0].axes[0]
    assert [ln.get_label() for ln in acc_ax.lines] == ["binary_s0", "bonn_s0"]
    assert list(acc_ax.lines[1].get_xdata()) == [1, 2, 3]
    assert list(acc_ax.lines[1].get_ydata()) == pytest.approx([50.0, 62.0, 70.0])


def test_plots_of_a_log_file_go_next_to_it(tmp_path):
    from training.plots import plot_run

    log = tmp_path / "fp_s0.train.jsonl"
    recs = [{"kind": "epoch", "epoch": e, "test_acc": 0.5, "train_acc": 0.6, "train_ce": 1.0, "test_loss": 1.1}
            for e in (1, 2)]
    log.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert plot_run(log) == [tmp_path / "fp_s0_curves.png"]
    assert (tmp_path / "fp_s0_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_missing_log_file_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nope.train.jsonl"), "--compare", str(tmp_path / "cmp.png")])
    assert e.value.code == 2 and "nope.train.jsonl" in capsys.readouterr().err
