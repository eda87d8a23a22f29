"""End to end: the real BentoML server (`bonn-serve serve`) with a random exported BONN + FP baseline.

Predictions over HTTP must equal the engine's (and onnxruntime's) on the same images; /metrics, /models and
/compare must report both backends. The server starts once for the module.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from _serving import BONN_NAME, FP_NAME, Server, cifar_images, encode, export_random_models, synthetic_images


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    bonn, fp = export_random_models(d)
    return d, bonn, fp


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("server")
    srv = Server(models[0], d / "home", d / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def engine(models):
    from bonn_serve.engine import Engine

    return Engine.load(models[1], threads=1)


@pytest.fixture(scope="module")
def fp_session(models):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # as in the server (BONN_THREADS=1): identical float results
    return ort.InferenceSession(str(models[2]), so, providers=["CPUExecutionProvider"])


def post_images(server: Server, blobs: list[tuple[str, bytes]], **fields) -> requests.Response:
    files = [
        ("image", (f"img{i}.{fmt.lower()}", b, f"image/{fmt.lower()}")) for i, (fmt, b) in enumerate(blobs)
    ]
    return requests.post(server.url + "/classify", files=files, data=fields, timeout=60)


def check_schema(body: dict, n_images: int, k: int, model: str, backend: str) -> None:
    assert body["model"] == model and body["backend"] == backend
    assert isinstance(body["version"], str) and body["version"]
    assert len(body["predictions"]) == n_images
    for preds in body["predictions"]:
        assert len(preds) == k
        assert all(set(p) == {"label", "score"} for p in preds)
        scores = [p["score"] for p in preds]
        assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    t = body["timings_ms"]
    assert {"decode", "inference", "total"} <= set(t) and all(v >= 0 for v in t.values())
    assert t["total"] >= t["inference"]


def assert_same_predictions(got: list[list[dict]], want: list[list[tuple[str, float]]]) -> None:
    for g, w in zip(got, want, strict=True):
        assert [p["label"] for p in g] == [label for label, _ in w]
        np.testing.assert_allclose([p["score"] for p in g], [s for _, s in w], atol=2e-6)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_synthetic_images_match_engine(server, engine, fmt):
    images = synthetic_images(6, seed=1)
    blobs = [encode(im, fmt) for im in images]
    r = post_images(server, [(fmt, b) for b in blobs], top_k="3")
    assert r.status_code == 200, r.text
    body = r.json()
    check_schema(body, 6, 3, BONN_NAME, "bonn-xnor")
    # Engine.classify decodes the same bytes itself (PIL), so this also checks the server's decoding path.
    assert_same_predictions(body["predictions"], engine.classify(blobs, top_k=3))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_cifar_images_match_engine(server, engine, fmt):
    images = cifar_images(24)
    if images is None:
        pytest.skip("cifar10_mini.npz not available")
    blobs = [encode(im, fmt) for im in images]
    for i in range(0, len(blobs), 8):  # 8 images per request
        r = post_images(server, [(fmt, b) for b in blobs[i : i + 8]], top_k="10")
        assert r.status_code == 200, r.text
        check_schema(r.json(), len(blobs[i : i + 8]), 10, BONN_NAME, "bonn-xnor")
        assert_same_predictions(r.json()["predictions"], engine.classify(blobs[i : i + 8], top_k=10))


def test_raw_body_and_fp_baseline_match_onnxruntime(server, fp_session):
    from bonn_serve.preprocess import preprocess

    img = synthetic_images(1, seed=5)[0]
    blob = encode(img, "PNG")
    r = requests.post(
        server.url + "/classify",
        data=blob,
        headers={"Content-Type": "image/png"},
        params={"model": FP_NAME, "top_k": "10"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    check_schema(body, 1, 10, FP_NAME, "onnxruntime-fp32")
    x = preprocess([img], read_bonn_spec(server))
    logits = fp_session.run(None, {fp_session.get_inputs()[0].name: x})[0][0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    assert [p["label"] for p in body["predictions"][0]] == [CLASSES[i] for i in order]
    np.testing.assert_allclose([p["score"] for p in body["predictions"][0]], probs[order], atol=2e-6)


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_bonn_spec(server: Server) -> dict:
    from bonn_serve.format import read_bonn

    models_dir = server.cmd[server.cmd.index("--models-dir") + 1]
    return read_bonn(f"{models_dir}/{BONN_NAME}.bonn").input_spec


def test_concurrent_requests_are_batched_correctly(server, engine):
    images = synthetic_images(16, seed=9)
    blobs = [encode(im, "PNG") for im in images]
    want = engine.classify(blobs, top_k=1)

    def one(i: int):
        return post_images(server, [("PNG", blobs[i])], top_k="1")

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(16)))
    for r, w in zip(responses, want, strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0][0]["label"] == w[0][0]
        assert 1 <= r.json()["batch_size"] <= 32


def test_models_endpoint(server):
    body = requests.get(server.url + "/models", timeout=10).json()
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {BONN_NAME, FP_NAME}
    assert by_name[BONN_NAME]["backend"] == "bonn-xnor" and by_name[FP_NAME]["backend"] == "onnxruntime-fp32"
    assert 0 < by_name[BONN_NAME]["weight_bytes"] < by_name[FP_NAME]["weight_bytes"]
    assert by_name[BONN_NAME]["baseline"] == FP_NAME
    assert "accuracy" in by_name[BONN_NAME]


def test_metrics_have_named_series(server):
    blob = encode(synthetic_images(1)[0], "PNG")
    for model in (BONN_NAME, FP_NAME):
        assert post_images(server, [("PNG", blob)], model=model).status_code == 200
    requests.post(
        server.url + "/classify", data=b"not an image", headers={"Content-Type": "image/png"}, timeout=10
    )
    text = requests.get(server.url + "/metrics", timeout=10).text
    for series in (
        f'bonn_inference_seconds_bucket{{backend="bonn-xnor",le="0.001",model="{BONN_NAME}"}}',
        f'bonn_request_seconds_count{{backend="onnxruntime-fp32",model="{FP_NAME}"}}',
        "bonn_batch_size_bucket",
        f'bonn_images_classified_total{{backend="bonn-xnor",model="{BONN_NAME}"}}',
        'bonn_errors_total{reason="not_an_image"}',
        "bonn_model_weight_bytes",
        "bonn_process_resident_bytes",
        "bentoml_service_request_total",
    ):
        assert series in text, series


def test_compare_shows_both_backends(server):
    blob = encode(synthetic_images(1)[0], "PNG")
    for model in (BONN_NAME, FP_NAME):
        assert post_images(server, [("PNG", blob)], model=model).status_code == 200
    report = requests.get(server.url + "/compare", timeout=10).json()
    rows = {r["backend"]: r for r in report["models"]}
    assert set(rows) == {"bonn-xnor", "onnxruntime-fp32"}
    for row in rows.values():
        assert row["requests"] >= 1 and row["latency_ms"]["p50"] > 0 and row["latency_ms"]["p99"] > 0
        assert row["throughput_images_per_s"] > 0 and row["weight_bytes"] > 0
    assert report["ratios"]["weight_bytes_fp_over_bonn"] > 1
    page = requests.get(server.url + "/compare", headers={"Accept": "text/html"}, timeout=10)
    assert page.headers["content-type"].startswith("text/html")
    assert "<svg" in page.text and BONN_NAME in page.text and FP_NAME in page.text
    assert (
        "<script" not in page.text and "http" not in page.text.split("<body>")[1]
    )  # no CDN / external assets
    assert requests.get(server.url + "/compare?format=html", timeout=10).text.startswith("<!doctype html>")


def test_health_and_swagger(server):
    for path in ("/healthz", "/livez", "/readyz"):
        assert requests.get(server.url + path, timeout=10).status_code == 200
    assert requests.get(server.url + "/", timeout=10).status_code == 200


def test_serve_registration_is_idempotent(server, models, tmp_path):
    """`bonn-serve serve` registered models/ on start; registering again creates no new version."""
    import subprocess
    import sys

    env = dict(server.env)
    out = subprocess.run(
        [sys.executable, "-m", "bonn_serve", "register", str(models[0])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("already registered") == 2


def test_openapi_document_describes_our_routes(server):
    spec = requests.get(server.url + "/docs.json", timeout=10).json()
    assert "/classify" in spec["paths"] and "/models" in spec["paths"] and "/compare" in spec["paths"]
    assert "/healthz" in spec["paths"]  # BentoML's own entries are kept
    body = spec["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["required"] == ["image"]
    assert spec["openapi"].startswith("3.")
