"""Locust scenario for bonn-serve: a realistic mix of /classify traffic.

Run it through `bonn-serve loadtest` (which starts the server, gates on thresholds and writes the report), or
by hand against a running server:

    locust -f loadtests/locustfile.py --headless -u 8 -r 4 -t 30s --host http://127.0.0.1:3000

Configuration (environment variables, so the runner and a human use the same knobs):
  LOADTEST_MODELS    comma list of routes to exercise: "bonn", "fp" (default "bonn,fp"). The BONN is the
                     service's default model (no `model` parameter); the FP baseline is addressed by name.
  LOADTEST_FP_MODEL  registry name of the FP baseline (default: discovered from GET /models).
  LOADTEST_MIX       "full" (default: small JPEG/PNG, large photos, multi-image, raw body) or "small"
                     (only single small images: used for the BONN-vs-FP side-by-side).
  LOADTEST_CIFAR     npz with x_test, x or x_train (N,32,32,3) uint8
                     (default: /work/shared/data/cifar10/cifar10_mini.npz;
                     synthetic images when absent).
  LOADTEST_OUTCOMES  where to write per-request-name outcome counts (JSON) at the end of the run.
  LOADTEST_TIMEOUT   client timeout in seconds (default 30): a hang shows up as a `timeout` failure.
  LOADTEST_THINK_MS  each user waits uniformly 0..THINK_MS between requests (default 50; 0: closed loop, the
                     server's saturation throughput for the given number of users).

A 503 is load shedding, not a failure: it is recorded under "<name> (503 shed)" as a success, so the
per-route latency stats only contain answered requests, and the outcome file counts it as `shed_503`.
A 429 (BentoML's own in-flight limit, BONN_MAX_CONCURRENCY) is shedding too, kept apart as `shed_429`.
"""

from __future__ import annotations

import io
import json
import os
import random
import threading
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from locust import HttpUser, between, events, task
from PIL import Image

CIFAR_DEFAULT = "/work/shared/data/cifar10/cifar10_mini.npz"
POOL = 48  # distinct images per kind: enough to defeat any caching, small enough to build in < 1 s
SHED_SUFFIX = {"shed_503": " (503 shed)", "shed_429": " (429 shed)"}

_outcomes: dict[str, Counter] = defaultdict(Counter)
_outcomes_lock = threading.Lock()


def _record(name: str, kind: str) -> None:
    with _outcomes_lock:
        _outcomes[name][kind] += 1


# ---------------------------------------------------------------------------------------------- images
def _cifar_arrays(n: int, seed: int) -> np.ndarray:
    path = Path(os.environ.get("LOADTEST_CIFAR", CIFAR_DEFAULT))
    rng = np.random.default_rng(seed)
    if path.is_file():
        with np.load(path) as z:
            key = next((k for k in ("x_test", "x", "x_train") if k in z.files), None)
            if key is None:
                raise KeyError(f"{path}: no x / x_test / x_train array")
            x = z[key]
            idx = rng.choice(len(x), size=min(n, len(x)), replace=False)
            return np.ascontiguousarray(x[np.sort(idx)])
    # Synthetic fallback: smooth colour gradients plus noise, so JPEG behaves like on a photo.
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 31.0
    out = []
    for _ in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = c0 * xx[..., None] + c1 * yy[..., None] + rng.normal(0, 12, (32, 32, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _large_photo(arr: np.ndarray, rng: np.random.Generator) -> bytes:
    """A 640x480 'photo': an upscaled CIFAR image with sensor-like noise, JPEG q85 (~40-80 KB)."""
    im = Image.fromarray(arr).resize((640, 480), Image.BICUBIC)
    noisy = np.asarray(im, dtype=np.int16) + rng.integers(-6, 7, (480, 640, 3), dtype=np.int16)
    return _encode(np.clip(noisy, 0, 255).astype(np.uint8), "JPEG", quality=85)


class Images:
    """Encoded request payloads, built once per Locust process."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        arrs = _cifar_arrays(POOL, seed)
        self.jpeg = [_encode(a, "JPEG", quality=90) for a in arrs]
        self.png = [_encode(a, "PNG") for a in arrs]
        self.large = [_large_photo(a, rng) for a in arrs[:8]]


_images: Images | None = None


def images() -> Images:
    global _images
    if _images is None:
        _images = Images()
    return _images


# ---------------------------------------------------------------------------------------------- events
@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    images()  # build the payloads before the clock starts


@events.user_error.add_listener
def _on_user_error(user_instance, exception, tb, **_kw) -> None:
    # An exception inside a task never reaches Locust's request stats; count it so the run fails.
    _record("task", "task_error")


@events.quitting.add_listener
def _on_quitting(environment, **_kw) -> None:
    path = os.environ.get("LOADTEST_OUTCOMES")
    if path:
        with _outcomes_lock:
            data = {name: dict(c) for name, c in sorted(_outcomes.items())}
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------- user
def _routes() -> list[str]:
    routes = [r.strip() for r in os.environ.get("LOADTEST_MODELS", "bonn,fp").split(",") if r.strip()]
    bad = set(routes) - {"bonn", "fp"}
    if bad or not routes:
        raise ValueError(f"LOADTEST_MODELS must list 'bonn' and/or 'fp', got {routes}")
    return routes


def discover_fp_model(models_json: object) -> str | None:
    """Pick the FP baseline's registry name from GET /models. Tolerates a list of entries or
    {"models": [...]},
    each entry a dict with a name and a backend/kind telling BONN from FP."""
    entries = models_json.get("models", models_json) if isinstance(models_json, dict) else models_json
    if isinstance(entries, dict):  # {name: info}
        entries = [
            dict(info, name=name) if isinstance(info, dict) else {"name": name}
            for name, info in entries.items()
        ]
    for e in entries or []:
        if not isinstance(e, dict):
            continue
        tags = " ".join(str(e.get(k, "")) for k in ("backend", "kind", "type", "format", "role")).lower()
        if any(t in tags for t in ("onnx", "fp", "float", "baseline")) and "bonn" not in tags:
            return str(e.get("name"))
    return None


def judge(resp, n_expected: int) -> str:
    """A response's outcome kind: ok, shed_503/shed_429 (the service asked to retry), or a failure kind."""
    status = resp.status_code
    if status == 0:  # requests-level error (connection refused/reset, timeout) wrapped by locust
        err = str(getattr(resp, "error", "")).lower()
        return "timeout" if "timed out" in err or "timeout" in err else "connection"
    if status == 503:  # shed only if the service says so; any other 503 (e.g. BentoML's) is a failure
        try:
            overloaded = resp.json().get("error") == "overloaded"
        except Exception:
            overloaded = False
        return "shed_503" if overloaded else "http_5xx"
    if status == 429:
        return "shed_429"
    if status >= 500:
        return "http_5xx"
    if status >= 400:
        return "http_4xx"
    try:
        body = resp.json()
        preds = body["predictions"]
    except (ValueError, KeyError, TypeError):
        return "bad_body"
    # One prediction list per image; a single image may come back unwrapped.
    if n_expected > 1 and (not isinstance(preds, list) or len(preds) != n_expected):
        return "bad_body"
    return "ok"


class ClassifyUser(HttpUser):
    wait_time = between(0.0, float(os.environ.get("LOADTEST_THINK_MS", "50")) / 1000.0)

    def on_start(self) -> None:
        self.timeout = float(os.environ.get("LOADTEST_TIMEOUT", "30"))
        self.routes = _routes()
        self.mix = os.environ.get("LOADTEST_MIX", "full")
        self.fp_model = os.environ.get("LOADTEST_FP_MODEL")
        if "fp" in self.routes and not self.fp_model:
            r = self.client.get("/models", name="/models", timeout=self.timeout)
            self.fp_model = discover_fp_model(r.json()) if r.ok else None
            if not self.fp_model:
                raise RuntimeError(f"no FP baseline found in GET /models: {r.status_code} {r.text[:300]}")
        self.rng = random.Random()

    # One request, classified. `route` is the stats prefix; `model` None means the server default (BONN).
    def _classify(
        self,
        label: str,
        n_expected: int,
        *,
        files=None,
        data=None,
        headers=None,
        route: str,
        model: str | None,
    ) -> None:
        name = f"{route} {label}"
        params = {"top_k": "3"}
        if model:
            params["model"] = model
        try:
            with self.client.post(
                "/classify",
                params=params,
                files=files,
                data=data,
                headers=headers,
                name=name,
                timeout=self.timeout,
                catch_response=True,
            ) as resp:
                kind = judge(resp, n_expected)
                if kind in SHED_SUFFIX:
                    resp.request_meta["name"] = name + SHED_SUFFIX[kind]
                    resp.success()
                elif kind == "ok":
                    resp.success()
                else:
                    resp.failure(f"{kind}: HTTP {resp.status_code} {resp.text[:200]!r}")
                _record(name, kind)
        except Exception as e:
            _record(name, "timeout" if "timed out" in str(e).lower() else "connection")
            raise

    def _pick_route(self) -> tuple[str, str | None]:
        route = self.rng.choice(self.routes)
        return route, (self.fp_model if route == "fp" else None)

    @task(6)
    def small_jpeg(self) -> None:
        route, model = self._pick_route()
        img = self.rng.choice(images().jpeg)
        self._classify(
            "small-jpeg", 1, files=[("image", ("img.jpg", img, "image/jpeg"))], route=route, model=model
        )

    @task(3)
    def small_png(self) -> None:
        if self.mix == "small":
            return self.small_jpeg()
        route, model = self._pick_route()
        img = self.rng.choice(images().png)
        self._classify(
            "small-png", 1, files=[("image", ("img.png", img, "image/png"))], route=route, model=model
        )

    @task(2)
    def raw_body_png(self) -> None:
        if self.mix == "small":
            return self.small_jpeg()
        route, model = self._pick_route()
        img = self.rng.choice(images().png)
        self._classify(
            "raw-png", 1, data=img, headers={"Content-Type": "image/png"}, route=route, model=model
        )

    @task(2)
    def large_photo(self) -> None:
        if self.mix == "small":
            return self.small_jpeg()
        route, model = self._pick_route()
        img = self.rng.choice(images().large)
        self._classify(
            "large-jpeg-640x480",
            1,
            files=[("image", ("photo.jpg", img, "image/jpeg"))],
            route=route,
            model=model,
        )

    @task(2)
    def multi_image(self) -> None:
        if self.mix == "small":
            return self.small_jpeg()
        route, model = self._pick_route()
        imgs = self.rng.sample(images().jpeg, 4)
        files = [("image", (f"img{i}.jpg", b, "image/jpeg")) for i, b in enumerate(imgs)]
        self._classify("multi-4-jpeg", 4, files=files, route=route, model=model)
