"""Every kind of bad request gets a 4xx JSON {error, detail} from the real server; never a 5xx.

Also: overload gives 503 with Retry-After (in-process, with the engine held so the queue fills up).
"""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
import requests
from _serving import BONN_NAME, Server, encode, export_random_models, png_header_only, synthetic_images
from PIL import Image

MAX_BODY = 1 << 20  # a smaller body limit than the default 8 MiB keeps the test quick
MAX_IMAGES = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return (d, *export_random_models(d))


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("server")
    srv = Server(
        models[0],
        d / "home",
        d / "server.log",
        BONN_MAX_BODY_BYTES=str(MAX_BODY),
        BONN_MAX_IMAGES=str(MAX_IMAGES),
        BONN_MAX_PIXELS="4000000",
    ).start()
    yield srv
    srv.stop()


def real_bomb_png() -> bytes:
    """A 2500 x 2000 (5 MP) one-colour PNG: a few KB on the wire, 15 MB decoded; over the 4 MP limit."""
    buf = io.BytesIO()
    Image.new("L", (2500, 2000), 0).save(buf, "PNG", optimize=True)
    return buf.getvalue()


GOOD = encode(synthetic_images(1)[0], "PNG")
JPEG = encode(synthetic_images(1)[0], "JPEG")
TIFF = (lambda b: (Image.new("RGB", (8, 8)).save(b, "TIFF"), b.getvalue())[1])(io.BytesIO())

# name -> (request kwargs, expected status, expected error code)
CASES: dict[str, tuple[dict, int, str]] = {
    "non_image_multipart": (
        dict(files=[("image", ("x.png", b"this is text", "image/png"))]),
        400,
        "not_an_image",
    ),
    "non_image_raw": (dict(data=b"GIF87a? no", headers={"Content-Type": "image/gif"}), 400, "corrupt_image"),
    "pdf_bytes": (
        dict(data=b"%PDF-1.7\n1 0 obj", headers={"Content-Type": "image/png"}),
        400,
        "not_an_image",
    ),
    "truncated_png": (
        dict(files=[("image", ("t.png", GOOD[: len(GOOD) // 2], "image/png"))]),
        400,
        "corrupt_image",
    ),
    "truncated_jpeg": (
        dict(data=JPEG[: len(JPEG) // 2], headers={"Content-Type": "image/jpeg"}),
        400,
        "corrupt_image",
    ),
    "empty_raw_body": (dict(data=b"", headers={"Content-Type": "image/png"}), 400, "empty_body"),
    "empty_multipart_file": (dict(files=[("image", ("e.png", b"", "image/png"))]), 400, "empty_image"),
    "wrong_field_name": (dict(files=[("images", ("a.png", GOOD, "image/png"))]), 400, "missing_field"),
    "image_as_text_field": (dict(files=[("image", (None, "hello"))]), 400, "bad_field"),
    "zero_width": (
        dict(data=png_header_only(0, 10), headers={"Content-Type": "image/png"}),
        400,
        "zero_size_image",
    ),
    "zero_height": (
        dict(files=[("image", ("z.png", png_header_only(10, 0), "image/png"))]),
        400,
        "zero_size_image",
    ),
    "pixel_bomb_header": (
        dict(data=png_header_only(60000, 60000), headers={"Content-Type": "image/png"}),
        413,
        "image_too_large",
    ),
    "pixel_bomb_real": (
        dict(files=[("image", ("b.png", real_bomb_png(), "image/png"))]),
        413,
        "image_too_large",
    ),
    "too_many_images": (
        dict(files=[("image", (f"{i}.png", GOOD, "image/png")) for i in range(MAX_IMAGES + 1)]),
        413,
        "too_many_images",
    ),
    "body_too_large": (
        dict(data=b"\xff\xd8\xff" + b"\0" * MAX_BODY, headers={"Content-Type": "image/jpeg"}),
        413,
        "request_too_large",
    ),
    "unknown_model": (
        dict(files=[("image", ("a.png", GOOD, "image/png"))], data={"model": "nope"}),
        404,
        "unknown_model",
    ),
    "path_traversal_model": (
        dict(data=GOOD, headers={"Content-Type": "image/png"}, params={"model": "../../etc/passwd"}),
        404,
        "unknown_model",
    ),
    "unknown_version": (
        dict(data=GOOD, headers={"Content-Type": "image/png"}, params={"model": f"{BONN_NAME}:doesnotexist"}),
        404,
        "unknown_model",
    ),
    "top_k_text": (
        dict(files=[("image", ("a.png", GOOD, "image/png"))], data={"top_k": "abc"}),
        400,
        "bad_top_k",
    ),
    "top_k_zero": (
        dict(data=GOOD, headers={"Content-Type": "image/png"}, params={"top_k": "0"}),
        400,
        "bad_top_k",
    ),
    "top_k_too_big": (
        dict(data=GOOD, headers={"Content-Type": "image/png"}, params={"top_k": "11"}),
        400,
        "bad_top_k",
    ),
    "top_k_negative": (
        dict(data=GOOD, headers={"Content-Type": "image/png"}, params={"top_k": "-3"}),
        400,
        "bad_top_k",
    ),
    "content_type_json": (
        dict(data=b'{"image": "x"}', headers={"Content-Type": "application/json"}),
        415,
        "unsupported_media_type",
    ),
    "content_type_text": (
        dict(data=GOOD, headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    ),
    "no_content_type": (dict(data=GOOD, headers={"Content-Type": ""}), 415, "unsupported_media_type"),
    "multipart_without_boundary": (
        dict(data=GOOD, headers={"Content-Type": "multipart/form-data"}),
        400,
        "bad_multipart",
    ),
    "multipart_garbage": (
        dict(data=b"--xyz\r\nnonsense", headers={"Content-Type": "multipart/form-data; boundary=xyz"}),
        400,
        "missing_field",
    ),
    "unsupported_format_tiff": (dict(data=TIFF, headers={"Content-Type": "image/tiff"}), 400, "not_an_image"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_is_4xx_json(server, case):
    kwargs, status, code = CASES[case]
    r = requests.post(server.url + "/classify", timeout=60, **kwargs)
    assert r.status_code < 500, (r.status_code, r.text)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]


def test_chunked_body_over_limit_is_413(server):
    def chunks():
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"\0" * 65536

    r = requests.post(
        server.url + "/classify", data=chunks(), headers={"Content-Type": "image/png"}, timeout=60
    )
    assert r.status_code == 413 and r.json()["error"] == "request_too_large"


def test_wrong_method_is_4xx_json(server):
    for method, path in (("get", "/classify"), ("post", "/models"), ("delete", "/compare")):
        r = getattr(requests, method)(server.url + path, timeout=10)
        assert r.status_code == 405
        assert r.headers["content-type"] == "application/json", (path, r.text[:200])
        assert r.json()["error"] == "method_not_allowed" and r.json()["detail"], r.text
    # an unknown path is BentoML's to answer (its router runs first): a 404, plain text (docs/security.md)
    assert requests.get(server.url + "/no-such-route", timeout=10).status_code == 404


def test_extreme_aspect_ratio_is_classified(server):
    """1 x 1,000,000 pixels: 2 KB on the wire, under the pixel limit, and resized whole it would become a
    32 x 32,000,000 image (4 GB). Only its crop is resized (tests/test_images.py checks the sizes)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1_000_000), (200, 30, 30)).save(buf, "PNG", optimize=True)
    r = requests.post(server.url + "/classify", data=buf.getvalue(), headers={"Content-Type": "image/png"},
                      timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"][0]) == 5


def test_server_still_healthy_and_counts_errors(server):
    for case in ("unknown_model", "wrong_field_name"):
        kwargs, _, _ = CASES[case]
        requests.post(server.url + "/classify", timeout=60, **kwargs)
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
    ok = requests.post(server.url + "/classify", data=GOOD, headers={"Content-Type": "image/png"}, timeout=60)
    assert ok.status_code == 200
    text = requests.get(server.url + "/metrics", timeout=10).text
    assert 'bonn_errors_total{reason="unknown_model"}' in text
    assert 'bonn_errors_total{reason="missing_field"}' in text
    assert "Traceback" not in server.log()


# --------------------------------------------------------------------------------------------- overload
def test_overload_gives_503_with_retry_after(models):
    """Hold the engine, fill the queue, and the next request must be refused with 503 + Retry-After."""
    import httpx

    from bonn_serve import registry
    from bonn_serve.backends import LoadedModel
    from bonn_serve.classifier import Classifier
    from bonn_serve.engine import Engine
    from bonn_serve.http_api import build_app
    from bonn_serve.settings import load_settings

    engine = Engine.load(models[1], threads=1)
    release = threading.Event()

    def held_predict(x: np.ndarray) -> np.ndarray:
        release.wait(30)
        return engine.predict(x)

    entry = registry.ModelEntry(BONN_NAME, "test", "bonn", registry.BONN_BACKEND, models[1])
    loaded = LoadedModel(entry, held_predict, engine.classes, engine.input_spec, 1, 0, 0.0)
    settings = load_settings()
    settings = type(settings)(
        **{**settings.__dict__, "max_batch": 1, "max_queue": 2, "inline_ms": 0.0}
    )  # engine on its thread: the loop stays free
    clf = Classifier(settings, [loaded])
    app = build_app(lambda: clf)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            def post():
                return client.post("/classify", content=GOOD, headers={"Content-Type": "image/png"})

            first = asyncio.create_task(post())  # taken by the runner, blocked in the engine
            await asyncio.sleep(0.2)
            queued = [asyncio.create_task(post()) for _ in range(2)]  # fill the queue (2 images)
            await asyncio.sleep(0.2)
            refused = await post()
            release.set()
            done = await asyncio.gather(first, *queued)
            return refused, done

    refused, done = asyncio.run(scenario())
    clf.close()
    assert refused.status_code == 503
    assert refused.json()["error"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in done] == [200, 200, 200]
