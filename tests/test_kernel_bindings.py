"""The kernel layer's Python bindings (bind_kernels.cc): path discovery, measurements and argument errors."""
import os

import pytest

_engine = pytest.importorskip("bonn_serve._engine")


def test_paths_are_consistent() -> None:
    paths = _engine.supported_paths()
    assert "portable" in paths
    assert set(paths) <= {"portable", "avx2", "avx512", "neon"}
    if not os.environ.get("BONN_POPCOUNT"):
        assert _engine.selected_path() in paths


@pytest.mark.parametrize("path", ["portable", "avx2", "avx512", "neon"])
def test_peak_and_layer_bench_per_path(path: str) -> None:
    if path not in _engine.supported_paths():
        with pytest.raises(RuntimeError):
            _engine.popcount_peak_gbmacs(path, 0.01)
        return
    assert _engine.popcount_peak_gbmacs(path, 0.02) > 0
    seconds = _engine.bench_bconv(64, 64, 8, 8, 3, 1, 1, 1, path, 3)
    assert 0 < seconds < 10


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        _engine.popcount_peak_gbmacs("sse9", 0.01)
    with pytest.raises(ValueError):
        _engine.bench_bconv(0, 64, 8, 8, 3, 1, 1, 1, "portable", 3)
    with pytest.raises(ValueError):
        _engine.bench_bconv(64, 64, 8, 8, 3, 1, 1, 1, "portable", 0)
    with pytest.raises(ValueError):
        _engine.popcount_peak_gbmacs("portable", -1.0)
