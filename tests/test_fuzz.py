"""Hostile input: hypothesis fuzzing of the image decode path and of the HTTP /classify path.

Decode fuzzing runs in a child process (`_in_child`) under a memory cap: a segfault in a C decoder or an
allocation blow-up would otherwise take pytest down with it, and a crash there must fail the test, not the
run. The contract checked: `decode_image` returns an RGB image or raises `ImageError` with a 4xx status;
nothing else escapes. Over HTTP: nothing a client sends yields a status >= 500, and every error is JSON.
(The `.bonn` loader's robustness is covered in tests/test_format_robustness.py.)
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import pytest

INNER = os.environ.get("BONN_FUZZ_INNER") == "1"
HERE = Path(__file__).resolve()
REPO = HERE.parents[1]

if INNER:  # the child: cap the address space so a decompression bomb fails as MemoryError, not OOM-kill
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("BONN_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


# ------------------------------------------------------------------------------------------- seed images
def _seed_images() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    out = {}
    for fmt, kw in (
        ("PNG", {}),
        ("JPEG", {"quality": 80}),
        ("WEBP", {"quality": 80}),
        ("BMP", {}),
        ("GIF", {}),
    ):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, **kw)
        out[fmt] = buf.getvalue()
    # Animated GIF, palette PNG with transparency, 16-bit greyscale PNG, progressive JPEG, RGBA WebP.
    frames = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], loop=0)
    out["GIF-anim"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(arr).convert("P").save(buf, format="PNG", transparency=0)
    out["PNG-P-trns"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16)).save(buf, format="PNG")
    out["PNG-I16"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", progressive=True)
    out["JPEG-prog"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(np.dstack([arr, arr[..., :1]])).save(buf, format="WEBP", lossless=True)
    out["WEBP-RGBA"] = buf.getvalue()
    return out


SEEDS = _seed_images()


@st.composite
def mutated_image(draw) -> bytes:
    """A valid image with a few byte-level mutations: flips, overwrites, truncation, insertion, splicing."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "dup"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 16))]
        else:
            j = draw(st.integers(i, min(len(data), i + 32)))
            data[i:i] = data[i:j]
    return bytes(data)


def png_with_size(width: int, height: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG whose IHDR declares width x height (valid CRCs) with a tiny IDAT: a decompression-bomb probe."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def gif_with_size(width: int, height: int) -> bytes:
    """GIF89a with a logical screen and one image descriptor of the given size and an almost empty raster."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", width, height, 0x80, 0, 0)
        + b"\x00\x00\x00\xff\xff\xff"
        + b","
        + struct.pack("<HHHHB", 0, 0, width, height, 0)
        + b"\x02\x02\x44\x01\x00;"
    )


def bmp_with_size(width: int, height: int) -> bytes:
    """A 24-bit BMP whose info header declares the size but carries only a few pixel bytes."""
    pixels = b"\x00" * 48
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


def jpeg_with_size(width: int, height: int) -> bytes:
    """The seed JPEG with its SOF frame size patched."""
    data = bytearray(SEEDS["JPEG"])
    i = 2
    while i + 9 < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            break
        i += 2 + length
    return bytes(data)


def webp_with_size(width: int, height: int) -> bytes:
    """A VP8X (extended) WebP header declaring a canvas of width x height (each 1..2^24)."""
    vp8x = struct.pack("<I", 0) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


HUGE_MAKERS = {
    "png": (png_with_size, 2**31 - 1),
    "gif": (gif_with_size, 65535),
    "bmp": (bmp_with_size, 2**31 - 1),
    "jpeg": (jpeg_with_size, 65535),
    "webp": (webp_with_size, 2**24),
}


# ------------------------------------------------------------------------------------------- the contract
def check_decode_contract(data: bytes, max_pixels: int = 24_000_000) -> str:
    """decode_image(data) returns an RGB image or raises ImageError(4xx); returns the outcome code."""
    from bonn_serve.images import DecodeLimits, ImageError, decode_image

    try:
        im = decode_image(data, DecodeLimits(max_pixels=max_pixels))
    except ImageError as e:
        assert 400 <= e.status < 500, (e.code, e.status)
        assert e.code and e.detail
        return e.code
    assert im.mode == "RGB" and im.size[0] > 0 and im.size[1] > 0
    assert im.size[0] * im.size[1] <= max_pixels
    im.tobytes()  # the pixels really are there
    return "ok"


# ------------------------------------------------------------------------------------------- inner (child)
# Collected only inside the child process that test_decode_fuzz_in_child starts.
if INNER:

    @FUZZ_SETTINGS
    @given(st.binary(max_size=4096))
    def test_inner_random_bytes(data: bytes) -> None:
        check_decode_contract(data)

    @FUZZ_SETTINGS
    @given(
        st.sampled_from(
            [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"GIF87a", b"BM", b"RIFF\x00\x00\x00\x00WEBP"]
        ),
        st.binary(max_size=2048),
    )
    def test_inner_magic_then_garbage(magic: bytes, rest: bytes) -> None:
        check_decode_contract(magic + rest)

    @FUZZ_SETTINGS
    @given(mutated_image())
    def test_inner_mutated_images(data: bytes) -> None:
        check_decode_contract(data)

    @FUZZ_SETTINGS
    @given(st.sampled_from(sorted(HUGE_MAKERS)), st.data())
    def test_inner_huge_declared_dimensions(fmt: str, data) -> None:
        make, top = HUGE_MAKERS[fmt]
        w = data.draw(st.integers(1, top), label="width")
        h = data.draw(st.integers(1, top), label="height")
        code = check_decode_contract(make(w, h), max_pixels=1_000_000)
        if w * h > 1_000_000:  # over the limit: refused before decoding, whatever else is wrong with the file
            assert code in ("image_too_large", "corrupt_image", "not_an_image", "zero_size_image"), code

    def test_inner_seeds_decode() -> None:
        """Sanity: every unmutated seed decodes (otherwise the mutation fuzz would test nothing)."""
        for name, data in SEEDS.items():
            assert check_decode_contract(data) == "ok", name

    @pytest.mark.parametrize("fmt", sorted(HUGE_MAKERS))
    def test_inner_bomb_is_413_without_decoding(fmt: str) -> None:
        from bonn_serve.images import DecodeLimits, ImageError, decode_image

        make, top = HUGE_MAKERS[fmt]
        side = min(top, 60000)
        with pytest.raises(ImageError) as ei:
            decode_image(make(side, side), DecodeLimits(max_pixels=24_000_000))
        assert ei.value.status == 413 and ei.value.code == "image_too_large", (ei.value.code, ei.value.detail)


# ------------------------------------------------------------------------------------------- outer
def _run_child(examples: int, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, BONN_FUZZ_INNER="1", BONN_FUZZ_EXAMPLES=str(examples))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE),
        "-k",
        "inner",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-x",
    ]
    return subprocess.run(
        cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _assert_child_ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode >= 0, (
        f"fuzz child killed by signal {-r.returncode} (a decoder crash):\n{r.stdout[-4000:]}"
    )
    assert r.returncode == 0, f"fuzz child failed:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
    m = re.search(r"(\d+) passed", r.stdout)
    assert m and int(m.group(1)) >= 10, f"the fuzz child ran too few tests:\n{r.stdout[-2000:]}"


@pytest.mark.skipif(INNER, reason="outer driver")
def test_decode_fuzz_in_child() -> None:
    """~1500 decode attempts (random, mutated, huge headers) in a crash-isolated, memory-capped child."""
    _assert_child_ok(_run_child(examples=300, timeout=300))


@pytest.mark.slow
@pytest.mark.skipif(INNER, reason="outer driver")
def test_decode_fuzz_in_child_long() -> None:
    _assert_child_ok(_run_child(examples=3000, timeout=1800))


# ------------------------------------------------------------------------------------------- HTTP path
# The same hostile bytes, end to end: a real server, a real socket. Contract: never a status >= 500 (a 503
# only under overload, which one sequential client cannot cause) and every error is JSON {error, detail}.
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="exporting a random test model needs torch (train extra)",
)
HTTP_SETTINGS = settings(
    max_examples=int(os.environ.get("BONN_HTTP_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from bonn_serve import loadtest as lt

    d = tmp_path_factory.mktemp("fuzz_server")
    bonn, fp = lt.export_random_models(d / "models")
    lt.register_models(d / "home", bonn, fp)
    # A small body limit so the oversize cases are cheap; everything else at its default.
    env = {"BONN_MAX_BODY_BYTES": str(2 << 20), "BONN_WORKERS": "1"}
    with lt.start_server(d / "home", d / "server.log", env_extra=env, extra_args=["--no-register"]) as srv:
        srv.client = httpx.Client(base_url=srv.url, timeout=30)
        yield srv
        srv.client.close()
        assert lt.http_get(srv.url + "/livez")[0] == 200, "the server died during the fuzzing"
        log = srv.log_text()
        assert "Traceback" not in log, log[-4000:]


def assert_client_error_contract(r) -> None:
    assert r.status_code < 500, f"HTTP {r.status_code}: {r.text[:500]}"
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body, dict) and body.get("error") and body.get("detail"), r.text[:300]
    else:
        assert r.status_code == 200 and "predictions" in r.json(), r.text[:300]


FIELD_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "../../etc/passwd",
            "..%2F..%2Fetc",
            "/etc/passwd",
            "bonn-wrn22-16:../../x",
            "fp-wrn22-16\x00",
            "A" * 300,
            "bonn-wrn22-16:latest",
            "fp-wrn22-16",
            "",
            " ",
            "-1",
            "0",
            "1e9",
            "99999999999999999999",
            "3",
            "NaN",
        ]
    ),
)
CONTENT_TYPES = st.sampled_from(
    [
        "image/png",
        "image/jpeg",
        "image/webp",
        "image/x-evil",
        "application/octet-stream",
        "text/plain",
        "application/json",
        "multipart/form-data",
        "multipart/form-data; boundary=zzz",
        "",
        "image/png; charset=utf-8",
    ]
)


@needs_torch
@HTTP_SETTINGS
@given(
    body=st.one_of(st.binary(max_size=3000), mutated_image()),
    ctype=CONTENT_TYPES,
    model=st.none() | FIELD_TEXT,
    top_k=st.none() | FIELD_TEXT,
)
def test_http_raw_body_fuzz(server, body: bytes, ctype: str, model, top_k) -> None:
    params = {k: v for k, v in (("model", model), ("top_k", top_k)) if v is not None}
    headers = {"Content-Type": ctype} if ctype else {}
    assert_client_error_contract(
        server.client.post("/classify", content=body, headers=headers, params=params)
    )


@needs_torch
@HTTP_SETTINGS
@given(
    images=st.lists(
        st.one_of(mutated_image(), st.sampled_from(sorted(SEEDS.values()))), min_size=0, max_size=4
    ),
    field=st.sampled_from(["image", "image", "images", "file", ""]),
    model=st.none() | FIELD_TEXT,
    top_k=st.none() | FIELD_TEXT,
    as_text=st.booleans(),
)
def test_http_multipart_fuzz(server, images: list[bytes], field: str, model, top_k, as_text: bool) -> None:
    files = [(field, (f"f{i}.bin", b, "application/octet-stream")) for i, b in enumerate(images)]
    data = {k: v for k, v in (("model", model), ("top_k", top_k)) if v is not None}
    if as_text and images:  # the image sent as a plain form value instead of a file
        data[field or "image"] = images[0].decode("latin-1")[:1000]
        files = files[1:]
    if not files and not data:
        data = {"x": "1"}
    r = server.client.post("/classify", files=files or None, data=data)
    assert_client_error_contract(r)


@needs_torch
@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "too_many_images",
        "oversized_body",
        "oversized_declared_length",
        "bomb_png",
        "bomb_gif",
        "zero_width_png",
        "text_as_image",
        "wrong_field",
        "traversal_model",
        "bad_top_k",
        "huge_top_k",
        "mismatched_content_type",
        "malformed_multipart",
        "gif_anim",
        "png16",
    ],
)
def test_http_hostile_cases(server, case: str) -> None:
    c = server.client
    jpeg = SEEDS["JPEG"]
    expect = {
        "mismatched_content_type": 200,
        "gif_anim": 200,
        "png16": 200,
        "bomb_png": 413,
        "bomb_gif": 413,
        "oversized_body": 413,
        "oversized_declared_length": 413,
        "too_many_images": 413,
    }
    if case == "empty":
        r = c.post("/classify", content=b"", headers={"Content-Type": "image/png"})
    elif case == "too_many_images":
        r = c.post("/classify", files=[("image", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(33)])
    elif case == "oversized_body":
        r = c.post("/classify", content=os.urandom(3 << 20), headers={"Content-Type": "image/jpeg"})
    elif case == "oversized_declared_length":
        r = _raw_post(
            server.url,
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 99999999999\r\nConnection: close\r\n\r\n",
        )
    elif case == "bomb_png":
        r = c.post("/classify", content=png_with_size(50000, 50000), headers={"Content-Type": "image/png"})
    elif case == "bomb_gif":
        r = c.post("/classify", files=[("image", ("b.gif", gif_with_size(65535, 65535), "image/gif"))])
    elif case == "zero_width_png":
        r = c.post("/classify", content=png_with_size(0, 10), headers={"Content-Type": "image/png"})
    elif case == "text_as_image":
        r = c.post("/classify", data={"image": "not a file"})
    elif case == "wrong_field":
        r = c.post("/classify", files=[("images", ("a.jpg", jpeg, "image/jpeg"))])
    elif case == "traversal_model":
        r = c.post(
            "/classify",
            params={"model": "../../../../etc/passwd"},
            content=jpeg,
            headers={"Content-Type": "image/jpeg"},
        )
        assert r.status_code in (400, 404), r.text
    elif case == "bad_top_k":
        r = c.post("/classify", params={"top_k": "abc"}, content=jpeg, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 400, r.text
    elif case == "huge_top_k":
        r = c.post(
            "/classify",
            params={"top_k": "1" + "0" * 400},
            content=jpeg,
            headers={"Content-Type": "image/jpeg"},
        )
        assert r.status_code == 400, r.text
    elif case == "mismatched_content_type":  # the format is sniffed, not trusted from the header
        r = c.post("/classify", content=jpeg, headers={"Content-Type": "image/png"})
    elif case == "malformed_multipart":
        r = c.post(
            "/classify",
            content=b'--zzz\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc',
            headers={"Content-Type": "multipart/form-data; boundary=zzz"},
        )
    elif case == "gif_anim":
        r = c.post("/classify", files=[("image", ("a.gif", SEEDS["GIF-anim"], "image/gif"))])
    elif case == "png16":
        r = c.post("/classify", files=[("image", ("a.png", SEEDS["PNG-I16"], "image/png"))])
    else:
        raise AssertionError(case)
    assert_client_error_contract(r)
    if case in expect:
        assert r.status_code == expect[case], (case, r.status_code, r.text[:300])
    else:
        assert 400 <= r.status_code < 500, (case, r.status_code, r.text[:300])


class _RawResponse:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.text, self._body = status, body.decode("latin-1"), body

    def json(self):
        import json

        return json.loads(self._body)


def _raw_post(url: str, request: bytes) -> _RawResponse:
    """Send bytes httpx refuses to produce (a lying Content-Length) and parse the reply."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return _RawResponse(status, body)


def _dechunk(body: bytes) -> bytes:
    out, i = b"", 0
    while True:
        j = body.index(b"\r\n", i)
        n = int(body[i:j], 16)
        if n == 0:
            return out
        out += body[j + 2 : j + 2 + n]
        i = j + 2 + n + 2
