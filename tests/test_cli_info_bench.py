"""`bonn-serve info` and `bonn-serve bench` end to end (bench in its --quick form)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bonn_serve.cli import main

pytest.importorskip("bonn_serve._engine")
from test_format_robustness import tiny_model_blob  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture()
def tiny_model(tmp_path) -> Path:
    path = tmp_path / "tiny.bonn"
    path.write_bytes(tiny_model_blob(tmp_path))
    return path


def test_info_text(tiny_model, capsys):
    assert main(["info", str(tiny_model), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "model        tiny" in out
    assert "binary MACs" in out and "float MACs" in out
    assert "binary_conv2d x2" in out
    assert f"({tiny_model.stat().st_size:,} B)" in out
    assert "1 thread(s)" in out


def test_info_quotes_the_card_only_for_its_own_file(tiny_model, capsys):
    import hashlib

    card = tiny_model.with_suffix(".card.json")
    sha = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    card.write_text(json.dumps({"sha256": sha, "accuracy": {"test_top1": 0.8140, "n": 10000,
                                                            "measured_with": "bonn-serve engine"}}))
    assert main(["info", str(tiny_model), "--threads", "1"]) == 0
    assert "test top-1 81.40% on 10000 images (bonn-serve engine)" in capsys.readouterr().out
    card.write_text(json.dumps({"sha256": "0" * 64, "accuracy": {"test_top1": 0.99}}))  # another file's card
    assert main(["info", str(tiny_model), "--threads", "1"]) == 0
    assert "test top-1" not in capsys.readouterr().out
    card.unlink()


def test_info_json(tiny_model, capsys):
    assert main(["info", str(tiny_model), "--json", "--threads", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "tiny" and info["classes"] == 4 and info["ops"] == 7
    # b1: 12x12x8 outputs x 3*3*8; b2: 6x6x16 outputs x 3*3*8
    assert info["binary_macs"] == 12 * 12 * 8 * 72 + 6 * 6 * 16 * 72
    assert info["float_macs"] == 12 * 12 * 8 * 27 + 6 * 6 * 16 * 8 + 16 * 4
    assert info["fused_packs"] == 1 and info["threads"] == 1
    assert info["file_bytes"] == tiny_model.stat().st_size and len(info["sha256"]) == 64


def test_info_rejects_corrupt_file(tiny_model, capsys):
    blob = bytearray(tiny_model.read_bytes())
    blob[-1] ^= 0xFF
    tiny_model.write_bytes(bytes(blob))
    assert main(["info", str(tiny_model)]) == 1
    assert "checksum mismatch" in capsys.readouterr().err


def test_bench_rejects_bad_options(capsys):
    for argv in (["bench", "--batches", "0"], ["bench", "--archs", "vgg"], ["bench", "--threads", "x"]):
        with pytest.raises(SystemExit) as ei:
            main(argv)
        assert ei.value.code == 2


def test_bench_quick(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "bench"
    assert main(["bench", "--quick", "--out-dir", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "vs FP32" in printed and "wrote" in printed
    result = json.loads((out_dir / "bench.json").read_text())
    rows = result["latency"]
    assert {(r["arch"], r["batch"], r["threads"]) for r in rows} == {("wrn22-16", 1, 1), ("wrn22-16", 2, 1)}
    for r in rows:
        for b in ("engine", "ort_fp32", "ort_int8"):
            assert r[f"{b}_median_ms"] > 0
        assert r["speedup_vs_fp32"] == pytest.approx(r["ort_fp32_median_ms"] / r["engine_median_ms"])
    sizes = result["sizes"]["wrn22-16"]
    assert sizes["bonn_bytes"] < sizes["onnx_int8_bytes"] < sizes["onnx_fp32_bytes"]
    layers = [l for l in result["layers"]["wrn22-16"] if l["op"] == "binary_conv2d"]
    assert len(layers) == 18
    assert all(l["pct_peak_in_graph"] > 0 and l["pct_peak_isolated"] > 0 for l in layers)
    assert result["machine"]["popcount_peak_gbmacs_1t"] > 0
    assert (out_dir / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
