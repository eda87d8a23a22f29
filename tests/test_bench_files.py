"""scripts/bench_files.py: times .bonn (engine) and .onnx (onnxruntime) files against each other."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from _serving import export_random_models

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_files", ROOT / "scripts" / "bench_files.py")
bench_files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_files)


def test_bench_files_times_each_model_and_batch(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("bonn_serve._engine", reason="engine extension not built")
    bonn, fp = export_random_models(tmp_path)
    assert bench_files.main([str(bonn), str(fp), "--batches", "1,3", "--runs", "3", "--warmup", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # 2 models x 2 batch sizes
    assert sum(bonn.name in line for line in lines) == 2 and sum(fp.name in line for line in lines) == 2
    assert all(" ms " in line for line in lines) and "x1.00 of the first" in lines[0]


def test_two_files_with_one_name_are_both_timed(tmp_path, capsys):
    pytest.importorskip("bonn_serve._engine", reason="engine extension not built")
    import shutil

    bonn, _ = export_random_models(tmp_path)
    (tmp_path / "other").mkdir()
    twin = shutil.copy(bonn, tmp_path / "other" / bonn.name)
    assert bench_files.main([str(bonn), str(twin), "--batches", "1", "--runs", "2", "--warmup", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and str(bonn) in lines[0] and str(twin) in lines[1]
    with pytest.raises(SystemExit):
        bench_files.main([str(bonn), str(bonn)])
