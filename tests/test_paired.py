"""training.paired: McNemar's exact test and the paired interval on two models' per-image predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.paired import compare, main, mcnemar_exact_p


def test_mcnemar_exact_p_known_values():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(5, 0) == pytest.approx(2 / 32)  # 2 P(X <= 0), X ~ Bin(5, 1/2)
    assert mcnemar_exact_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact_p(2, 10) == mcnemar_exact_p(10, 2)  # two-sided
    assert mcnemar_exact_p(7, 7) == 1.0  # capped
    assert mcnemar_exact_p(600, 400) < 1e-9 < mcnemar_exact_p(509, 506)


def test_compare_counts_only_the_discordant_images():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    a = np.array([0, 1, 2, 3, 4, 5, 9, 9, 9, 9])  # right on 0-5 and 9
    b = np.array([0, 1, 2, 9, 9, 9, 6, 7, 9, 9])  # right on 0-2, 6, 7 and 9
    r = compare(a, b, labels)
    assert (r["a_only"], r["b_only"], r["n"]) == (3, 2, 10)
    assert r["acc_a"] == 0.7 and r["acc_b"] == 0.6 and r["diff"] == pytest.approx(0.1)
    se = math.sqrt(5 - 1 / 10) / 10
    assert r["ci_low"] == pytest.approx(0.1 - 1.96 * se) and r["ci_high"] == pytest.approx(0.1 + 1.96 * se)
    with pytest.raises(ValueError):
        compare(a, b[:5], labels)


def _save(path, pred, label, split="test"):
    np.savez(path, pred=np.asarray(pred, np.int16), label=np.asarray(label, np.int16), sha256=np.asarray("x"),
             split=np.asarray(split))


def test_cli_prints_one_table_and_refuses_different_images(tmp_path, capsys):
    y = np.arange(100) % 10
    _save(tmp_path / "a.npz", y, y)
    _save(tmp_path / "b.npz", np.where(np.arange(100) < 30, (y + 1) % 10, y), y)
    assert main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--names", "BONN", "(b)"]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| 100 | 100.00 | 70.00 | +30.00") and "| 30 | 0 |" in row
    _save(tmp_path / "c.npz", y, (y + 1) % 10)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "a.npz"), str(tmp_path / "c.npz")])
    assert e.value.code == 2 and "different images" in capsys.readouterr().err
    np.savez(tmp_path / "junk.npz", x=np.zeros(3))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.npz"), str(tmp_path / "junk.npz")])
    assert "not a `bonn-serve eval --predictions` file" in capsys.readouterr().err
