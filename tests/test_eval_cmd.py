"""`bonn-serve eval`: accuracy through the engine equals the torch model's accuracy on the same images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bonn_serve.cli import main
from bonn_serve.commands.eval import normalize
from bonn_serve.datasets import balanced_subset, load_cifar10

from _data import CIFAR_DIR as DATA  # noqa: E402
pytestmark = pytest.mark.skipif(not (DATA / "cifar10_mini.npz").exists(), reason="no cifar10_mini.npz")


def _engine_available() -> bool:
    try:
        from bonn_serve import _engine  # noqa: F401
    except ImportError:
        return False
    return True


def _mini_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mini"
    d.mkdir()
    (d / "cifar10_mini.npz").symlink_to(DATA / "cifar10_mini.npz")
    return d


def test_normalize_matches_the_training_pipeline_bit_for_bit():
    """Every pixel value in every channel: what training evaluates on is exactly what the engine gets, as
    written into the .bonn header (so the logged PyTorch accuracy and the engine's see the same inputs)."""
    from bonn_serve.preprocess import preprocess
    from training.data import Normalizer
    from training.export import input_spec_header
    from training.models import CIFAR10_INPUT

    x = np.repeat(np.arange(256, dtype=np.uint8), 4).reshape(1, 32, 32, 1).repeat(3, axis=3)
    x[..., 1] = x[..., 1][:, ::-1]  # other values side by side in the other channels
    spec = input_spec_header(CIFAR10_INPUT)
    ours = normalize(x, spec["scale"], spec["mean"], spec["std"])
    ref = Normalizer(CIFAR10_INPUT.mean, CIFAR10_INPUT.std)(torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(ours, ref.numpy())
    np.testing.assert_array_equal(preprocess(x[0], spec), ours)  # the service's path too


@pytest.mark.skipif(not _engine_available(), reason="bonn_serve._engine not built")
def test_eval_through_engine_matches_torch(tmp_path):
    from training.export import export_bonn, export_onnx
    from training.models import CIFAR10_INPUT, build_model, randomize_

    model = randomize_(build_model("wrn22-16", binary=True), seed=3).eval()
    export_bonn(model, tmp_path / "m.bonn", "wrn22-16")
    fp = randomize_(build_model("wrn22-16", binary=False), seed=3).eval()
    export_onnx(fp, tmp_path / "fp.onnx", arch="wrn22-16")
    d = _mini_dir(tmp_path)
    x, y = load_cifar10(d, "test")
    keep = balanced_subset(y, 200)
    x, y = x[keep], y[keep]
    inp = torch.from_numpy(normalize(x, 1 / 255, CIFAR10_INPUT.mean, CIFAR10_INPUT.std))
    with torch.no_grad():
        torch_pred, fp_pred = model(inp).argmax(1).numpy(), fp(inp).argmax(1).numpy()

    out = tmp_path / "r.json"
    assert main(["eval", str(tmp_path / "m.bonn"), "--data-dir", str(d), "--limit", "200", "--json", str(out),
                 "--threads", "1", "--batch", "64", "--predictions", str(tmp_path / "m.npz")]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 200 and res["runtime"] == "bonn-serve engine" and "class-balanced" in res["subset"]
    # a random net has many near-ties; the engine and torch must still agree on almost every argmax
    assert abs(res["accuracy"] - float((torch_pred == y).mean())) <= 0.02
    assert res["sha256"] and res["bytes"] == (tmp_path / "m.bonn").stat().st_size
    with np.load(tmp_path / "m.npz") as z:  # per image, in the evaluated order
        assert z["label"].tolist() == y.tolist() and str(z["sha256"]) == res["sha256"]
        assert float((z["pred"] == y).mean()) == res["accuracy"] and (z["pred"] == torch_pred).mean() >= 0.98

    assert main(["eval", str(tmp_path / "fp.onnx"), "--data-dir", str(d), "--limit", "200",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["runtime"].startswith("onnxruntime")
    assert abs(res["accuracy"] - float((fp_pred == y).mean())) <= 0.01


def test_limit_takes_the_classes_in_turn():
    y = np.repeat(np.arange(10), 7)  # class-major, like the npz files
    idx = balanced_subset(y, 25)
    assert len(idx) == 25 and list(idx) == sorted(idx) and len(set(idx.tolist())) == 25
    counts = np.bincount(y[idx], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 25
    assert set(balanced_subset(y, 10).tolist()) <= set(idx.tolist())  # a larger n keeps a smaller n's images
    assert balanced_subset(y, 10).tolist() == [7 * c for c in range(10)]  # the first image of each class
    assert len(balanced_subset(y, 1000)) == len(y)
    uneven = np.array([0, 0, 0, 0, 1, 2])
    assert sorted(uneven[balanced_subset(uneven, 4)].tolist()) == [0, 0, 1, 2]


def test_eval_errors_are_clean(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing.bonn"), "--data-dir", str(tmp_path)]) == 2
    (tmp_path / "m.bonn").write_bytes(b"junk")
    assert main(["eval", str(tmp_path / "m.bonn"), "--data-dir", str(tmp_path)]) == 2
    assert "no cifar10" in capsys.readouterr().err


@pytest.mark.parametrize("file", ["bonn-wrn22-16.bonn", "fp-wrn22-16.onnx", "wide/bonn-wrn22-64.bonn"])
def test_shipped_model_accuracy_matches_its_card(tmp_path, file):
    """`bonn-serve eval` (the engine for .bonn, onnxruntime for .onnx) on the 10,000 test images reproduces the
    card's accuracy (±0.1) and was measured on this very file."""
    model = Path(__file__).resolve().parents[1] / "models" / file
    card = model.with_name(model.stem + ".card.json")
    if not (model.exists() and card.exists() and (DATA / "cifar10_test.npz").exists()):
        pytest.skip("needs the shipped model, its card and the full CIFAR-10 test split")
    if model.suffix == ".bonn" and not _engine_available():
        pytest.skip("engine extension not built")
    if model.suffix == ".onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / "eval.json"
    assert main(["eval", str(model), "--data-dir", str(DATA), "--split", "test", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    stated = json.loads(card.read_text())
    assert got["n"] == 10000 and got["sha256"] == stated["sha256"]
    stated = stated["accuracy"]["test_top1"]
    assert abs(100 * got["accuracy"] - 100 * stated) <= 0.1
