"""The XNOR engine computes the same logits as PyTorch (eval mode) and as the float-emulated binary model
exported to ONNX (run by onnxruntime), on every popcount path, every float ISA and with 1 or 2 threads.

Relative error is defined as ``max|engine - reference| / max|reference|`` over the whole logits array, and
must stay below 1e-3. (All three compute sign(BN(x)) in float32 as x * scale + shift, so the binary parts
agree bit for bit; what remains is float summation order in the stem, shortcut and classifier.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from bonn_serve.engine import Engine  # noqa: E402

_engine = pytest.importorskip("bonn_serve._engine")

from training.export import export_bonn, export_onnx  # noqa: E402
from training.models import build_model, randomize_  # noqa: E402

TOL = 1e-3
PATHS = list(_engine.supported_paths())
FLOAT_ISAS = list(_engine.supported_float_isas())


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max|b|."""
    return float(np.abs(a - b).max() / np.abs(b).max())


class Exported:
    def __init__(self, arch: str, seed: int, tmp: Path):
        torch.manual_seed(seed)
        self.arch = arch
        self.model = randomize_(build_model(arch), seed).eval()
        self.bonn = tmp / f"{arch}.bonn"
        self.onnx = tmp / f"{arch}.onnx"
        export_bonn(self.model, self.bonn, arch)
        export_onnx(self.model, self.onnx, arch=arch)
        self.session = ort.InferenceSession(str(self.onnx), providers=["CPUExecutionProvider"])

    def references(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            ref_torch = self.model(torch.from_numpy(x)).numpy()
        ref_onnx = self.session.run(None, {"input": x})[0]
        return ref_torch, ref_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("parity")
    cache: dict[str, Exported] = {}

    def get(arch: str) -> Exported:
        if arch not in cache:
            cache[arch] = Exported(arch, seed=1234, tmp=tmp)
        return cache[arch]

    return get


def _check_all_paths(exp: Exported, x: np.ndarray) -> None:
    ref_torch, ref_onnx = exp.references(x)
    assert rel_err(ref_onnx, ref_torch) < TOL, "the ONNX float emulation disagrees with PyTorch"
    engines = [Engine.load(exp.bonn, threads=t, popcount=p) for p in PATHS for t in (1, 2)]
    engines += [Engine.load(exp.bonn, threads=1, float_isa=isa) for isa in FLOAT_ISAS]
    for eng in engines:
        out = eng.predict(x)
        assert out.shape == ref_torch.shape and out.dtype == np.float32
        label = f"{exp.arch} x{list(x.shape)} path={eng.popcount_path} isa={eng.info['float_isa']} " \
                f"threads={eng.threads}"
        assert rel_err(out, ref_torch) < TOL, f"{label}: engine vs torch {rel_err(out, ref_torch):.3g}"
        assert rel_err(out, ref_onnx) < TOL, f"{label}: engine vs onnx {rel_err(out, ref_onnx):.3g}"


@pytest.mark.parametrize("arch", ["wrn22-16", "wrn22-64"])
@pytest.mark.parametrize("batch", [1, 7])
def test_wrn_matches_torch_and_onnx(exported, arch, batch):
    rng = np.random.default_rng(batch)
    _check_all_paths(exported(arch), rng.standard_normal((batch, 3, 32, 32), dtype=np.float32))


@pytest.mark.parametrize("batch,size", [(1, 64), (2, 96), (1, 224)])
def test_resnet18_matches_torch_and_onnx(exported, batch, size):
    """Small inputs keep torch fast; the engine sizes every layer from the runtime input shape."""
    rng = np.random.default_rng(size)
    _check_all_paths(exported("resnet18"), rng.standard_normal((batch, 3, size, size), dtype=np.float32))


def test_non_square_input_and_batch_consistency(exported):
    exp = exported("wrn22-16")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 3, 40, 24), dtype=np.float32)
    ref_torch, _ = exp.references(x)
    eng = Engine.load(exp.bonn, threads=2)
    out = eng.predict(x)
    assert rel_err(out, ref_torch) < TOL
    # Each image alone gives the same logits as inside the batch (plans per shape, no cross-talk).
    for i in range(3):
        assert rel_err(eng.predict(x[i:i + 1])[0], out[i]) < 1e-6


def test_popcount_env_override_in_subprocess(exported):
    """BONN_POPCOUNT forces the default path (checked in a fresh process, where the choice is made)."""
    exp = exported("wrn22-16")
    code = ("import sys; from bonn_serve.engine import Engine; "
            "e = Engine.load(sys.argv[1], threads=1); print(e.popcount_path)")
    for path in PATHS:
        env = dict(os.environ, BONN_POPCOUNT=path)
        out = subprocess.run([sys.executable, "-c", code, str(exp.bonn)], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == path


def test_a_forced_path_packs_with_that_path_whatever_the_environment(exported, monkeypatch):
    """A model built for one popcount path also packs activations with it: BONN_POPCOUNT naming a path this
    CPU lacks (or another path) must not reach into a model that was told which path to use."""
    exp = exported("wrn22-16")
    x = np.random.default_rng(9).standard_normal((2, 3, 32, 32), dtype=np.float32)
    want = {p: Engine.load(exp.bonn, threads=1, popcount=p).predict(x) for p in PATHS}
    monkeypatch.setenv("BONN_POPCOUNT", "neon" if "neon" not in PATHS else "avx512")
    for p in PATHS:
        np.testing.assert_array_equal(Engine.load(exp.bonn, threads=1, popcount=p).predict(x), want[p])


def test_non_finite_input_is_refused(exported):
    """NaN has no sign: the engine would binarize it as +1 where PyTorch's sign gives -1. Refuse it."""
    eng = Engine.load(exported("wrn22-16").bonn, threads=1)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros((2, 3, 32, 32), np.float32)
        x[1, 2, 5, 7] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            eng.predict(x)


def test_classify_and_info(exported):
    exp = exported("wrn22-16")
    eng = Engine.load(exp.bonn, threads=1)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    rgba = rng.integers(0, 256, (33, 31, 4), dtype=np.uint8)
    results = eng.classify([rgb, gray, rgba], top_k=3)
    assert len(results) == 3
    for res in results:
        assert len(res) == 3
        probs = [p for _, p in res]
        assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        assert all(label in eng.classes for label, _ in res)
    # classify == softmax(predict(preprocess)) for the top class
    logits = eng.predict(eng.preprocess(rgb))
    assert results[0][0][0] == eng.classes[int(np.argmax(logits[0]))]
    info = eng.info
    assert info["arch"] == "wrn22-16" and info["classes"] == 10
    assert info["binary_macs"] > 0 and info["float_macs"] > 0
    assert info["ops"] == len(eng.packed.ops) and info["op_kinds"]["binary_conv2d"] == 18
    assert info["popcount_path"] in PATHS and info["file_bytes"] == exp.bonn.stat().st_size


def test_concurrent_predicts_on_one_engine(exported):
    """predict releases the GIL; calls from several Python threads are serialized inside the engine and
    each gets its own correct answer."""
    from concurrent.futures import ThreadPoolExecutor

    exp = exported("wrn22-16")
    eng = Engine.load(exp.bonn, threads=2)
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((b, 3, 32, 32), dtype=np.float32) for b in (1, 3, 2, 5, 1, 4)]
    serial = [eng.predict(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(eng.predict, xs * 3))
    for i, out in enumerate(parallel):
        np.testing.assert_array_equal(out, serial[i % len(xs)])
