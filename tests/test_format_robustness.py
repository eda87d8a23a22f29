"""Corrupt, truncated and inconsistent .bonn files fail with BonnFormatError / ValueError naming the problem,
never a crash.

Models are built here with numpy and `write_bonn` (no torch). `reheader` re-serializes an edited header with
correct checksums, so the graph checks (not just the checksums) are exercised; building `_engine.Model`
straight from an edited op list bypasses `format._check_graph` and exercises the C++ builder's own checks.
Fuzz loops run in a subprocess, so a segfault fails the test instead of killing pytest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bonn_serve.format import ALIGN, PREFIX, BonnFormatError, pack_sign_bits, parse_bonn, write_bonn

_engine = pytest.importorskip("bonn_serve._engine")
from bonn_serve.engine import Engine  # noqa: E402


# ------------------------------------------------------------------------------------------------ helpers
def tiny_model_blob(tmp: Path, seed: int = 0) -> bytes:
    """A small valid model: stem conv -> 2 binary blocks (the second downsamples, with a 1x1 shortcut)
    -> head BN/ReLU -> avgpool -> linear. 3x12x12 input, 4 classes."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    t, ops = {}, []

    def op(kind, name, inputs, attrs=None, tensors=None):
        ops.append({"name": name, "op": kind, "inputs": inputs, "output": name, "attrs": attrs or {},
                    "tensors": tensors or {}})

    t["stem.w"], t["stem.b"] = (f(8, 3, 3, 3), "OHWI"), (f(8), "C")
    op("conv2d", "stem", ["input"], dict(kernel=3, stride=1, padding=1, in_channels=3, out_channels=8, act="relu"),
       dict(weight="stem.w", bias="stem.b"))
    bits = {}
    for name, ci, co, stride, res in (("b1", 8, 8, 1, "stem"), ("b2", 8, 16, 2, "b2.sc")):
        if res == "b2.sc":
            t["sc.w"], t["sc.b"] = (f(16, 1, 1, 8), "OHWI"), (f(16), "C")
            op("conv2d", "b2.sc", ["b1"], dict(kernel=1, stride=2, padding=0, in_channels=8, out_channels=16,
                                               act="none"), dict(weight="sc.w", bias="sc.b"))
        src = "stem" if name == "b1" else "b1"
        t[f"{name}.s"], t[f"{name}.h"] = (f(ci), "C"), (f(ci), "C")
        t[f"{name}.w"] = (pack_sign_bits(f(co, 3, 3, ci)), "OHWI_bits64")
        bits[f"{name}.w"] = ci
        t[f"{name}.a"], t[f"{name}.p"] = (np.array([0.1], np.float32), "S"), (f(co), "C")
        op("binary_conv2d", name, [src, res], dict(kernel=3, stride=stride, padding=1, in_channels=ci,
                                                   out_channels=co),
           dict(bn_scale=f"{name}.s", bn_shift=f"{name}.h", weight=f"{name}.w", alpha=f"{name}.a",
                prelu=f"{name}.p"))
    t["hs"], t["hh"] = (f(16), "C"), (f(16), "C")
    op("batchnorm", "head", ["b2"], dict(act="relu"), dict(scale="hs", shift="hh"))
    op("global_avgpool", "gap", ["head"])
    t["fc.w"], t["fc.b"] = (f(4, 16), "OI"), (f(4), "C")
    op("linear", "logits", ["gap"], dict(in_features=16, out_features=4), dict(weight="fc.w", bias="fc.b"))
    header = {"model": {"name": "tiny", "arch": "tiny"},
              "input": {"layout": "NCHW", "channels": 3, "height": 12, "width": 12, "color": "RGB", "resize": 12,
                        "crop": 12, "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3},
              "classes": ["a", "b", "c", "d"], "graph": {"input": "input", "output": "logits", "ops": ops}}
    path = tmp / f"tiny{seed}.bonn"
    write_bonn(path, header, t, bits)
    return path.read_bytes()


def split(blob: bytes) -> tuple[dict, bytes, int]:
    """-> (header, payload, payload offset)."""
    _, _, _, hlen, _ = PREFIX.unpack_from(blob, 0)
    header = json.loads(blob[PREFIX.size:PREFIX.size + hlen])
    off = math.ceil((PREFIX.size + hlen) / ALIGN) * ALIGN
    return header, blob[off:], off


def reheader(blob: bytes, header: dict) -> bytes:
    """Re-serialize `header` (payload unchanged) with a correct header checksum."""
    _, payload, _ = split(blob)
    hjson = json.dumps(header).encode()
    prefix = PREFIX.pack(b"\x89BONN\r\n\x1a", 1, 0, len(hjson), hashlib.sha256(hjson).digest())
    head = prefix + hjson
    return head + b"\0" * ((-len(head)) % ALIGN) + payload


def expect_error(blob: bytes, *words: str) -> str:
    with pytest.raises(BonnFormatError) as ei:
        parse_bonn(blob)
    msg = str(ei.value)
    assert any(w in msg for w in words), f"message {msg!r} names none of {words}"
    return msg


@pytest.fixture(scope="module")
def blob(tmp_path_factory) -> bytes:
    return tiny_model_blob(tmp_path_factory.mktemp("robust"))


def build_native(header: dict, tensors: dict):
    g = header["graph"]
    return _engine.Model(g["ops"], tensors, g["input"], g["output"], header["input"]["channels"], 1)


# -------------------------------------------------------------------------------------------- file level
def test_valid_tiny_model_runs(blob, tmp_path):
    path = tmp_path / "ok.bonn"
    path.write_bytes(blob)
    eng = Engine.load(path, threads=1)
    out = eng.predict(np.zeros((2, 3, 12, 12), np.float32))
    assert out.shape == (2, 4) and np.isfinite(out).all()


def test_truncated_at_every_length_class(blob):
    _, _, poff = split(blob)
    hend = PREFIX.size + PREFIX.unpack_from(blob, 0)[3]
    lengths = set(range(0, PREFIX.size + 2)) | {hend - 1, hend, poff - 1, poff, poff + 1, len(blob) - 1}
    lengths |= set(range(PREFIX.size, len(blob), 97))
    for n in sorted(lengths):
        if n >= len(blob):
            continue
        expect_error(blob[:n], "truncated", "checksum", "header length")


def test_bad_magic_version_trailing_and_checksums(blob):
    expect_error(b"GIF89a" + blob[6:], "bad magic")
    expect_error(blob[:8] + (2).to_bytes(2, "little") + blob[10:], "unsupported version")
    expect_error(blob + b"\0", "trailing")
    hdr_flip = bytearray(blob)
    hdr_flip[PREFIX.size + 5] ^= 0x20
    expect_error(bytes(hdr_flip), "header sha256")
    pay_flip = bytearray(blob)
    pay_flip[-3] ^= 0x01
    expect_error(bytes(pay_flip), "payload sha256")
    header, _, _ = split(blob)
    header["tensors"][0]["sha256"] = "0" * 64
    expect_error(reheader(blob, header), "checksum mismatch: tensor")


@pytest.mark.parametrize("edit,words", [
    (lambda h: h["graph"]["ops"][1].update(op="conv3d"), ("unknown op",)),
    (lambda h: h["graph"]["ops"][1]["attrs"].update(out_channels=9), ("shape mismatch",)),
    (lambda h: h["graph"]["ops"][1]["attrs"].update(in_channels=7), ("shape mismatch",)),
    (lambda h: h["graph"]["ops"][-1]["attrs"].update(in_features=15), ("shape mismatch",)),
    (lambda h: h["graph"]["ops"][1]["tensors"].update(weight="nope"), ("not in the tensor table",)),
    (lambda h: h["graph"]["ops"][1].update(inputs=["ghost"]), ("not defined",)),
    (lambda h: h["tensors"][0].update(shape=[8, 3, 3, 2]), ("length",)),
    (lambda h: h["tensors"][1].update(offset=h["tensors"][1]["offset"] + 4), ("aligned",)),
    (lambda h: h["classes"].pop(), ("class names",)),
])
def test_inconsistent_header_with_valid_checksums(blob, edit, words):
    header, _, _ = split(blob)
    edit(header)
    expect_error(reheader(blob, header), *words)


# ----------------------------------------------------------------------------------- C++ builder's checks
@pytest.mark.parametrize("edit,words", [
    (lambda ops, t: ops[1].update(op="conv3d"), "unknown op"),
    (lambda ops, t: ops[1]["attrs"].update(out_channels=9), "shape mismatch"),
    (lambda ops, t: ops[1]["attrs"].update(in_channels=7), "shape mismatch"),
    (lambda ops, t: ops[3]["inputs"].__setitem__(1, "b1"), "residual"),
    (lambda ops, t: ops[1]["attrs"].update(kernel=0), "kernel"),
    (lambda ops, t: ops[1]["attrs"].update(stride=True), "integer"),
    (lambda ops, t: ops[1]["attrs"].update(padding=1 << 70), "out of range"),
    (lambda ops, t: ops[1]["attrs"].update(padding=3), "padding"),
    (lambda ops, t: ops[1]["tensors"].pop("alpha"), "alpha"),
    (lambda ops, t: ops[1]["tensors"].update(extra="stem.w"), "unexpected tensor role"),
    (lambda ops, t: t.update({"b1.w": t["b1.w"].astype(np.float64)}), "dtype"),
    (lambda ops, t: t.update({"b1.s": t["b1.s"][:5]}), "shape mismatch"),
    (lambda ops, t: t.update({"b1.w": t["b1.w"] | np.uint64(1 << 40)}), "beyond in_channels"),
    (lambda ops, t: ops[1].update(inputs=["ghost"]), "not defined"),
    (lambda ops, t: ops[1].update(output="stem"), "already defined"),
    (lambda ops, t: ops[-1].update(inputs=["head"]), "flat"),
    (lambda ops, t: ops[0]["attrs"].update(act="gelu"), "activation"),
    (lambda ops, t: ops.__setitem__(2, "not a dict"), "object"),
    (lambda ops, t: ops[2].pop("op"), "op"),
])
def test_native_builder_rejects_inconsistent_graphs(blob, edit, words):
    model = parse_bonn(blob)
    header = copy.deepcopy(model.header)
    tensors = dict(model.tensors)
    build_native(header, tensors)  # the untouched graph builds
    edit(header["graph"]["ops"], tensors)
    with pytest.raises(ValueError) as ei:
        build_native(header, tensors)
    assert words in str(ei.value), str(ei.value)


def test_runtime_shape_errors_are_value_errors(blob, tmp_path):
    path = tmp_path / "ok.bonn"
    path.write_bytes(blob)
    eng = Engine.load(path, threads=1)
    for bad in (np.zeros((1, 3, 12, 12), np.float64), np.zeros((1, 4, 12, 12), np.float32),
                np.zeros((3, 12, 12), np.float32), np.zeros((0, 3, 12, 12), np.float32), [[1.0]]):
        with pytest.raises(ValueError):
            eng.predict(bad)
    assert eng.predict(np.zeros((1, 3, 1, 1), np.float32)).shape == (1, 4)  # every window is padded
    for kwargs in ({"threads": -1}, {"threads": 10_000}, {"threads": 1.5}, {"popcount": "sse9"},
                   {"float_isa": "avx1024"}):
        with pytest.raises(ValueError):
            Engine.load(path, **kwargs)
    # Without padding the stem's 3x3 window does not fit a 2x2 image.
    model = parse_bonn(blob)
    header = copy.deepcopy(model.header)
    header["graph"]["ops"][0]["attrs"]["padding"] = 0
    native = build_native(header, model.tensors)
    with pytest.raises(ValueError, match="smaller than its 3x3 window"):
        native.predict(np.zeros((1, 3, 2, 2), np.float32))


# ------------------------------------------------------------------------------- hostile, checksum-valid
def raw_header_blob(blob: bytes, hjson: bytes) -> bytes:
    """`blob`'s payload under an arbitrary header text (not necessarily valid JSON for our schema)."""
    _, payload, _ = split(blob)
    head = PREFIX.pack(b"\x89BONN\r\n\x1a", 1, 0, len(hjson), hashlib.sha256(hjson).digest()) + hjson
    return head + b"\0" * ((-len(head)) % ALIGN) + payload


def with_payload(blob: bytes, payload: bytes) -> bytes:
    """`blob` with an edited payload and every checksum recomputed, so only the structural checks can object."""
    header, _, _ = split(blob)
    header["payload"] = {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    for t in header["tensors"]:
        t["sha256"] = hashlib.sha256(payload[t["offset"]:t["offset"] + t["length"]]).hexdigest()
    new = reheader(blob, header)  # the old payload, of the same length, sits at its end
    return new[:len(new) - len(payload)] + payload


def test_hostile_json_is_a_format_error(blob):
    """What json and numpy raise on their own (recursion, digit limits, unhashable keys, rank limits) comes out
    as BonnFormatError, so `register` and `serve` print a message instead of a traceback."""
    header, _, _ = split(blob)
    expect_error(raw_header_blob(blob, b"[" * 100_000 + b"]" * 100_000), "malformed header")
    expect_error(raw_header_blob(blob, json.dumps(header).replace('"length": ', '"length": ' + "9" * 5000 + ", \"x\": ", 1)
                                 .encode()), "malformed header")
    for edit, words in (
        (lambda h: h["tensors"][0].__setitem__("dtype", []), ("unsupported dtype",)),
        (lambda h: h["tensors"][0].__setitem__("shape", [1] * 65), ("invalid shape",)),
        (lambda h: h["payload"].__setitem__("length", True), ("payload",)),
        (lambda h: h.__setitem__("model", None), ("'model'",)),
        (lambda h: h["model"].__setitem__("provenance", "x"), ("provenance",)),
    ):
        bad = copy.deepcopy(header)
        edit(bad)
        expect_error(reheader(blob, bad), *words)


@pytest.mark.parametrize("edit, words", [
    ({"crop": 8}, ("must equal crop",)),            # checked at 12x12, run at 8x8: every request would fail
    ({"height": 16, "width": 16}, ("must equal crop",)),
    ({"resize": 8, "crop": 12}, ("resize",)),
    ({"channels": 4, "mean": [0.5] * 4, "std": [0.25] * 4}, ("channels",)),
])
def test_input_spec_must_be_the_size_the_net_runs_at(blob, edit, words):
    header, _, _ = split(blob)
    header["input"].update(edit)
    expect_error(reheader(blob, header), *words)


def test_bytes_outside_tensors_must_be_zero(blob):
    """No checksum covers the header padding, and the payload checksum covers the gaps between tensors only
    as bytes: both must be zero (spec 2.1), so a valid file cannot carry hidden data."""
    header, payload, poff = split(blob)
    hend = PREFIX.size + PREFIX.unpack_from(blob, 0)[3]
    assert poff > hend, "the tiny model needs header padding for this test"
    b = bytearray(blob)
    b[hend] = 0x41
    expect_error(bytes(b), "padding")
    spans = sorted((t["offset"], t["offset"] + t["length"]) for t in header["tensors"])
    gap = next(end for (_, end), (nxt, _) in zip(spans, spans[1:]) if nxt > end)
    p = bytearray(payload)
    p[gap] = 0x41
    expect_error(with_payload(blob, bytes(p)), "outside the tensors")
    parse_bonn(with_payload(blob, payload))  # the helper itself keeps a valid file valid


def test_graph_that_grows_its_maps_is_refused_at_load(blob):
    """A chain of padded max-pools needs no weights and grows the map by K - 1 per op: without limits its first
    request would allocate gigabytes or run for hours. The engine refuses it when it is built."""
    header, _, _ = split(blob)
    ops = header["graph"]["ops"]
    head = next(i for i, o in enumerate(ops) if o["name"] == "head")

    def grown(n: int) -> bytes:  # n max-pools (64x64, padding 63) between the last block and the head
        chain = [{"name": f"g{i}", "op": "maxpool2d", "inputs": ["b2" if i == 0 else f"g{i - 1}"],
                  "output": f"g{i}", "attrs": {"kernel": 64, "stride": 1, "padding": 63}, "tensors": {}}
                 for i in range(n)]
        h = copy.deepcopy(header)
        h["graph"]["ops"] = ops[:head] + chain + [dict(ops[head], inputs=[f"g{n - 1}"])] + ops[head + 1:]
        return reheader(blob, h)

    model = parse_bonn(grown(40))  # structurally valid: 6x6 grows to 2526x2526
    with pytest.raises(ValueError, match="activations per image|multiply-adds per image"):
        Engine(model, threads=1)
    with pytest.raises(ValueError, match="exceeds the engine's"):  # past 65536 per side: shape inference stops
        Engine(parse_bonn(grown(1200)), threads=1)
    expect_error(grown(5000), "at most")  # more ops than any net has


def test_register_refuses_a_file_the_engine_refuses(blob, tmp_path, monkeypatch):
    """A file the Python reader accepts but the engine cannot build (here: a ReLU on a max-pool, which only the
    C++ builder checks) fails at `register`, naming the reason, not later in every server worker."""
    from bonn_serve import registry

    header, _, _ = split(blob)
    header["graph"]["ops"].insert(1, {"name": "mp", "op": "maxpool2d", "inputs": ["stem"], "output": "mp",
                                      "attrs": {"kernel": 1, "stride": 1, "padding": 0, "act": "relu"},
                                      "tensors": {}})
    header["graph"]["ops"][2]["inputs"][0] = "mp"
    path = tmp_path / "relu-pool.bonn"
    path.write_bytes(reheader(blob, header))
    parse_bonn(path.read_bytes())
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "home"))
    with pytest.raises(BonnFormatError, match="engine refuses this model"):
        registry.register(path)


# ------------------------------------------------------------------------------------------------- fuzzing
def _fuzz(seed: int, cases: int, workdir: Path) -> str:
    """Byte flips anywhere, then header-value mutations with valid checksums fed to both the Python reader
    and (bypassing it) the C++ builder + a run. Returns a summary; raises on any unexpected exception."""
    rng = np.random.default_rng(seed)
    blob = tiny_model_blob(workdir)
    model = parse_bonn(blob)
    ref = Engine(model, threads=1).predict(np.ones((1, 3, 12, 12), np.float32))
    _, _, poff = split(blob)
    hend = PREFIX.size + PREFIX.unpack_from(blob, 0)[3]
    rejected = accepted = 0
    for i in range(cases):
        b = bytearray(blob)
        pos = int(rng.integers(0, PREFIX.size + 40)) if i % 3 == 0 else int(rng.integers(0, len(b)))
        b[pos] ^= int(rng.integers(1, 256))
        try:
            m = parse_bonn(bytes(b))
        except BonnFormatError:
            rejected += 1
            continue
        # Accepted only where nothing is lost: the minor version (any minor of major 1 is valid). The
        # padding between header and payload, which no checksum covers, must stay zero.
        assert pos in (10, 11), f"flip at {pos} was accepted"
        np.testing.assert_array_equal(Engine(m, threads=1).predict(np.ones((1, 3, 12, 12), np.float32)), ref)
        accepted += 1
    values = [0, 1, 2, 3, -1, 7, 64, 65, 1 << 20, 1 << 33, True, None, "x", [1], 0.5]
    native_rejected = native_ran = 0
    for _ in range(cases):
        header = copy.deepcopy(model.header)
        ops = header["graph"]["ops"]
        op = ops[int(rng.integers(0, len(ops)))]
        target = op["attrs"] if op["attrs"] and rng.random() < 0.7 else op
        key = list(target)[int(rng.integers(0, len(target)))]
        target[key] = values[int(rng.integers(0, len(values)))]
        try:
            parse_bonn(reheader(blob, header))
        except BonnFormatError:
            pass
        try:
            native = build_native(header, model.tensors)
            hw = int(rng.integers(1, 20))
            native.predict(np.ones((1, 3, hw, hw), np.float32))
            native_ran += 1
        except ValueError:
            native_rejected += 1
    # Top-level and tensor-table fields too. Whatever the reader accepts must build into an engine that runs at
    # the declared input, or be refused by it with a ValueError: never a crash, never a non-ValueError.
    table_rejected = table_ran = 0
    for _ in range(cases):
        header = copy.deepcopy(model.header)
        target = [header["input"], header["model"], header["payload"], header["graph"],
                  header["tensors"][int(rng.integers(0, len(header["tensors"])))]][int(rng.integers(0, 5))]
        key = list(target)[int(rng.integers(0, len(target)))]
        target[key] = values[int(rng.integers(0, len(values)))]
        try:
            m = parse_bonn(reheader(blob, header))
        except BonnFormatError:
            table_rejected += 1
            continue
        try:
            side = m.input_spec["crop"]
            Engine(m, threads=1).predict(np.ones((1, m.input_spec["channels"], side, side), np.float32))
            table_ran += 1
        except ValueError:
            table_rejected += 1
    return (f"flips rejected={rejected} accepted(minor version)={accepted}; "
            f"mutations native_rejected={native_rejected} ran={native_ran}; "
            f"header fields rejected={table_rejected} ran={table_ran}")


def test_fuzz_never_crashes(tmp_path):
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, __file__, "fuzz", "20261125", "300", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"fuzz subprocess failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "flips rejected=" in proc.stdout


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "fuzz":
    print(_fuzz(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])))
