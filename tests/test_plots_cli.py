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
