"""training.forest: the checked CSV of BONN vs (b) pairs, the across-seeds rows, the table and the figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from training.forest import main, read_pairs, table, with_summaries

HEADER = "group,epochs,seed,bonn_pct,b_pct,diff,ci_low,ci_high,source\n"
COMMITTED_LOGS = Path(__file__).resolve().parents[1] / "models" / "logs"


def _csv(tmp_path, body: str):
    path = tmp_path / "pairs.csv"
    path.write_text(HEADER + body, encoding="utf-8")
    return path


def test_three_seeds_get_a_t_row_and_two_do_not(tmp_path):
    path = _csv(tmp_path, "r,42,0,80.0,80.5,-0.5,-1.2,0.2,s\nr,42,1,80.3,80.0,0.3,,,s\nr,42,2,80.1,80.0,0.1,-0.6,0.8,s\n"
                          "r,20,0,75.0,76.0,-1.0,-1.7,-0.3,s\nr,20,1,75.5,76.0,-0.5,,,s\n")
    rows = with_summaries(read_pairs(path))
    assert [r["seed"] for r in rows] == ["0", "1", "2", "3 seeds", "0", "1"]
    summary = rows[3]
    diffs = np.array([-0.5, 0.3, 0.1])
    half = 4.3027 * diffs.std(ddof=1) / math.sqrt(3)  # t(0.975, 2 df), by hand
    assert summary["diff"] == pytest.approx(diffs.mean())
    assert (summary["ci_low"], summary["ci_high"]) == (pytest.approx(diffs.mean() - half, rel=1e-4),
                                                       pytest.approx(diffs.mean() + half, rel=1e-4))
    text = table(rows)
    assert "| r | 42 | 1 | 80.30 | 80.00 | +0.30 | s |" in text  # no interval kept: none printed
    assert "| r | 42 | 3 seeds | 80.13 | 80.17 | **-0.03 (" in text


@pytest.mark.parametrize("body, message", [
    ("r,42,0,80.0,80.5,-0.4,,,s\n", "not bonn_pct − b_pct"),
    ("r,42,0,80.0,80.5,-0.5,-0.4,0.2,s\n", "outside its interval"),
    ("r,42,0,80.0,80.5,-0.5,-1.0,,s\n", "both ends"),
    ("r,4.5,0,80.0,80.5,-0.5,,,s\n", "whole number"),
    ("r,42,0,eighty,80.5,-0.5,,,s\n", "bonn_pct must be a number"),
    ("r,42,0,nan,80.5,-0.5,,,s\n", "finite"),
    (",42,0,80.0,80.5,-0.5,,,s\n", "empty group"),
    ("", "no rows"),
    ("r,42\n", "bonn_pct must be a number"),  # a short row
])
def test_a_wrong_row_is_refused_with_its_line(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        read_pairs(_csv(tmp_path, body))


def test_cli_writes_table_and_figure_and_refuses_a_bad_file(tmp_path, capsys):
    path = _csv(tmp_path, "r,42,0,80.0,80.5,-0.5,-1.2,0.2,s\nr,42,1,70.0,79.58,-9.58,-10.4,-8.7,s\n")
    png, md = tmp_path / "f.png", tmp_path / "f.md"
    assert main([str(path), "--plot", str(png), "--out", str(md)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and md.read_text().startswith("| recipe |")
    assert "-9.58 (-10.40 … -8.70)" in capsys.readouterr().out  # beyond the figure's axis, still in the table
    (tmp_path / "bad.csv").write_text("group,epochs\nr,42\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "bad.csv")])
    assert e.value.code == 2 and "missing columns" in capsys.readouterr().err


def test_the_committed_table_reads_and_matches_its_accuracies():
    """models/logs/bonn_vs_b.csv is what the README's figure is drawn from: every row passes the checks."""
    rows = read_pairs(COMMITTED_LOGS / "bonn_vs_b.csv")
    assert len(rows) >= 20


def test_the_committed_markdown_is_the_table_of_the_committed_csv(tmp_path):
    """models/logs/bonn_vs_b.md is derived from the CSV; a row added to one but not regenerated fails here."""
    regenerated = tmp_path / "bonn_vs_b.md"
    assert main([str(COMMITTED_LOGS / "bonn_vs_b.csv"), "--out", str(regenerated)]) == 0
    assert (COMMITTED_LOGS / "bonn_vs_b.md").read_text(encoding="utf-8") == regenerated.read_text(encoding="utf-8")
