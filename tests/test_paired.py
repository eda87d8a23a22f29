"""training.paired: McNemar's exact test and the paired interval on two models' per-image predictions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.paired import across_pairs, compare, compare_summaries, main, mcnemar_exact_p, pooled


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
    assert row.startswith("| a vs b | 100 | 100.00 | 70.00 | +30.00") and "| 30 | 0 |" in row
    _save(tmp_path / "c.npz", y, (y + 1) % 10)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "a.npz"), str(tmp_path / "c.npz")])
    assert e.value.code == 2 and "different images" in capsys.readouterr().err
    np.savez(tmp_path / "junk.npz", x=np.zeros(3))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.npz"), str(tmp_path / "junk.npz")])
    assert "not a `bonn-serve eval --predictions` file" in capsys.readouterr().err


def test_pooled_over_the_same_images_is_clustered_by_image():
    """Two pairs on the same 10 images whose effect recurs on the same images: the pooled interval is the one
    of the per-image mean difference (std / sqrt(n), computed independently here), wider than treating the
    pairs as 20 independent images would make it."""
    labels = np.arange(10) % 10
    wrong_first3 = np.where(np.arange(10) < 3, (labels + 1) % 10, labels)
    r1 = compare(labels, wrong_first3, labels)  # A only right on images 0-2
    r2 = compare(labels, np.where(np.arange(10) < 2, (labels + 1) % 10, labels), labels)  # on 0-1 again
    r = pooled([r1, r2])
    assert (r["n"], r["a_only"], r["b_only"], r["method"]) == (20, 5, 0, "by image")
    per_image = (r1["d"] + r2["d"]) / 2
    se = per_image.std() / np.sqrt(per_image.size)
    assert r["diff"] == pytest.approx(per_image.mean()) == pytest.approx(5 / 20)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(0.25 - 1.96 * se), pytest.approx(0.25 + 1.96 * se))
    independent_se = np.sqrt(5 - 25 / 20) / 20
    assert se > independent_se  # the recurring effect counted once per image, not twice
    assert r["p"] == pytest.approx(math.erfc(0.25 / se / math.sqrt(2)))
    assert r["acc_a"] == pytest.approx(1.0) and r["acc_b"] == pytest.approx(15 / 20)
    assert pooled([r1]) == r1  # one pair pools to itself, exact McNemar p and all


def test_pooled_over_different_images_sums_the_discordant_counts():
    labels = np.arange(10) % 10
    r1 = compare(labels, np.where(np.arange(10) < 3, (labels + 1) % 10, labels), labels)  # A only: 3
    other = (np.arange(10) + 3) % 10  # another image set
    r2 = compare(np.where(np.arange(10) < 1, (other + 1) % 10, other), other, other)  # B only: 1
    r = pooled([r1, r2])
    assert (r["n"], r["a_only"], r["b_only"]) == (20, 3, 1) and r["method"].startswith("independent")
    assert r["diff"] == pytest.approx(2 / 20) and r["p"] == mcnemar_exact_p(3, 1)


def _save_two_pairs(tmp_path):
    """a1/b1: A alone right on 10 of 100 images; a2/b2: B alone right on 4."""
    y = np.arange(100) % 10
    _save(tmp_path / "a1.npz", y, y)
    _save(tmp_path / "b1.npz", np.where(np.arange(100) < 10, (y + 1) % 10, y), y)
    _save(tmp_path / "a2.npz", np.where(np.arange(100) < 4, (y + 1) % 10, y), y)
    _save(tmp_path / "b2.npz", y, y)


def test_cli_pools_pairs_and_refuses_an_odd_file_count(tmp_path, capsys):
    _save_two_pairs(tmp_path)
    files = [str(tmp_path / f) for f in ("a1.npz", "b1.npz", "a2.npz", "b2.npz")]
    assert main(files) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 6 and rows[2].startswith("| a1 vs b1 |") and rows[3].startswith("| a2 vs b2 |")
    assert rows[4].startswith("| pooled (2 pairs, by image) | 200 | 98.00 | 95.00 | +3.00") and "| 10 | 4 |" in rows[4]
    # across the two pairs: differences +10 and -4 points, mean +3, t on 1 df (12.706 * sd / sqrt 2 = 88.94)
    assert rows[5].startswith("| across pairs (2, t on 1 df; sd 9.90) | 200 | 98.00 | 95.00 | +3.00 (-85.94 … +91.94)")
    with pytest.raises(SystemExit) as e:
        main(files[:3])
    assert e.value.code == 2 and "in pairs" in capsys.readouterr().err


def test_across_pairs_is_a_t_interval_on_the_pairs_differences():
    """Five seeds' differences: mean, sd and the t interval computed by hand (t(0.975, 4) = 2.7764)."""
    diffs = [-0.0004, 0.0036, 0.0005, -0.0031, -0.0045]
    rows = [compare_summaries(10000, 8000 + round(d * 10000), 8000) for d in diffs]
    r = across_pairs(rows)
    mean, sd = np.mean(diffs), np.std(diffs, ddof=1)
    assert r["pairs"] == 5 and r["n"] == 50000
    assert r["diff"] == pytest.approx(mean) and r["sd"] == pytest.approx(sd)
    assert r["ci_high"] - r["diff"] == pytest.approx(2.7764 * sd / math.sqrt(5), rel=1e-4)
    assert 0.6 < r["p"] < 0.7  # t = -0.55 on 4 df
    same = across_pairs([compare_summaries(100, 90, 80)] * 3)  # no spread: a sure effect, not a division by 0
    assert same["ci_low"] == pytest.approx(0.1) and same["ci_high"] == pytest.approx(0.1) and same["p"] < 1e-9
    with pytest.raises(ValueError):
        across_pairs(rows[:1])


def test_cli_takes_eval_summaries_for_pairs_whose_predictions_are_gone(tmp_path, capsys):
    """A pair of `bonn-serve eval --json` files counts in the across-pairs row, not in the by-image pool."""
    _save_two_pairs(tmp_path)
    for name, correct in (("a0", 95), ("b0", 96)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"n": 100, "correct": correct, "split": "test"}))
    files = [str(tmp_path / f) for f in ("a0.json", "b0.json", "a1.npz", "b1.npz", "a2.npz", "b2.npz")]
    assert main(files) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2] == "| a0 vs b0 | 100 | 95.00 | 96.00 | -1.00 (accuracies only) | – | – | – |"
    assert rows[5].startswith("| pooled (2 pairs, by image) | 200 | 98.00 | 95.00 | +3.00")
    assert rows[6].startswith("| across pairs (3, t on 2 df;") and "| 300 |" in rows[6] and "+1.67" in rows[6]
    (tmp_path / "c0.json").write_text(json.dumps({"n": 90, "correct": 80, "split": "test"}))
    (tmp_path / "bad.json").write_text(json.dumps({"accuracy": 0.9}))
    (tmp_path / "odd.json").write_text(json.dumps({"n": "100", "correct": None, "split": "test"}))
    for bad, message in ((["a0.json", "c0.json"], "different images"), (["a0.json", "bad.json"], "needs n"),
                         (["a0.json", "odd.json"], "None correct of 100 images"),
                         (["a0.json", "a1.npz"], "two prediction files or two eval summaries")):
        with pytest.raises(SystemExit) as e:
            main([str(tmp_path / f) for f in bad])
        assert e.value.code == 2 and message in capsys.readouterr().err
