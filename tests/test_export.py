"""The torch -> .bonn exporter: round trip through the reader, exact bit packing, and the ONNX float
emulation of the BONN matching PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from bonn_serve.format import pack_sign_bits, read_bonn, unpack_sign_bits  # noqa: E402
from training.export import bn_affine, export_bonn, export_onnx  # noqa: E402
from training.models import build_model, randomize_  # noqa: E402


@pytest.fixture(scope="module")
def wrn(tmp_path_factory):
    model = randomize_(build_model("wrn22-16", True), 3).eval()
    path = tmp_path_factory.mktemp("export") / "w.bonn"
    digest = export_bonn(model, path, "wrn22-16", provenance={"note": "test"})
    return model, path, digest


@pytest.mark.parametrize("ci", [1, 3, 17, 63, 64, 65, 130])
def test_pack_sign_bits_round_trip(ci):
    rng = np.random.default_rng(ci)
    w = rng.standard_normal((5, 3, 3, ci)).astype(np.float32)
    w[0, 0, 0, 0] = 0.0  # sign(0) = +1 -> bit 0
    bits = pack_sign_bits(w)
    assert bits.shape == (5, 3, 3, (ci + 63) // 64) and bits.dtype == np.uint64
    np.testing.assert_array_equal(unpack_sign_bits(bits, ci), np.where(w >= 0, 1.0, -1.0))
    # tail bits beyond ci are zero
    full = np.unpackbits(bits.view(np.uint8).reshape(5, 3, 3, -1), axis=-1, bitorder="little")
    assert not full[..., ci:].any()


def test_bonn_round_trip(wrn):
    model, path, digest = wrn
    pm = read_bonn(path)
    assert pm.checksum == digest
    assert pm.header["model"]["arch"] == "wrn22-16"
    assert pm.header["model"]["provenance"]["note"] == "test"
    kinds = [op["op"] for op in pm.ops]
    assert kinds.count("binary_conv2d") == 18 and kinds[0] == "conv2d" and kinds[-1] == "linear"
    conv = model.stages[1][0].conv
    op = next(o for o in pm.ops if o["name"] == "stages.1.0")
    bits = pm.tensors[op["tensors"]["weight"]]
    np.testing.assert_array_equal(unpack_sign_bits(bits, conv.in_channels),
                                  np.where(conv.weight.detach().permute(0, 2, 3, 1).numpy() >= 0, 1.0, -1.0))
    assert pm.tensors[op["tensors"]["alpha"]][0] == pytest.approx(float(conv.recon.mean()))
    assert op["inputs"][1] == "stages.1.0.shortcut"  # stride-2 block has a 1x1 conv + BN shortcut
    scale, _ = bn_affine(model.stages[1][0].bn)
    np.testing.assert_array_equal(pm.tensors[op["tensors"]["bn_scale"]], scale.detach().numpy())


def test_binary_weights_take_one_bit_each(tmp_path):
    model = randomize_(build_model("resnet18", True), 0).eval()
    export_bonn(model, tmp_path / "r.bonn", "resnet18")
    pm = read_bonn(tmp_path / "r.bonn")
    op = next(o for o in pm.ops if o["op"] == "binary_conv2d" and o["attrs"]["in_channels"] == 256
              and o["attrs"]["out_channels"] == 256)
    assert pm.tensors[op["tensors"]["weight"]].nbytes == 72 * 1024


def test_fp_model_cannot_be_packed(tmp_path):
    with pytest.raises(ValueError, match="only binary"):
        export_bonn(build_model("wrn22-16", False), tmp_path / "x.bonn", "wrn22-16")


@pytest.mark.parametrize("binary", [True, False])
def test_onnx_matches_torch(tmp_path, binary):
    """ONNX export (float emulation for binary) matches PyTorch eval within 1e-4 relative (max-abs scaled)."""
    model = randomize_(build_model("wrn22-16", binary), 5).eval()
    export_onnx(model, tmp_path / "m.onnx", arch="wrn22-16")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4
