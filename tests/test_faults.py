"""Fault injection against real `bonn-serve serve` processes.

Default run: a corrupt, truncated or swapped model file must stop the service from starting, and the message
must name the file and the problem; a corrupt shipped model in models/ must stop `serve` before BentoML
starts; a full queue must answer 503 with a reason and Retry-After.
Slow (`-m slow`): a worker SIGKILLed under load (clients get answers or errors within their timeout, never a
hang, and the service recovers), SIGTERM drains in-flight requests, BentoML's concurrency limit.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bonn_serve import loadtest as lt

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="exporting random test models needs torch (train extra)"
)

START_FAIL_TIMEOUT = 90.0  # generous: a model load on a busy 2-core box
CLIENT_TIMEOUT = 30.0  # a request not answered within this is a hang


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> tuple[Path, Path]:
    return lt.export_random_models(tmp_path_factory.mktemp("models"), seed=0)


@pytest.fixture(scope="module")
def other_bonn(tmp_path_factory) -> Path:
    """A different but perfectly valid .bonn (seed 1): only the registry checksum can tell it apart."""
    d = tmp_path_factory.mktemp("models_seed1")
    bonn, _ = lt.export_random_models(d, seed=1)
    return bonn


@pytest.fixture(scope="module")
def good_store(tmp_path_factory, model_files) -> Path:
    home = tmp_path_factory.mktemp("store")
    lt.register_models(home, *model_files)
    return home


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def stored_model(home: Path, name: str = "bonn-wrn22-16", fname: str = "model.bonn") -> Path:
    (path,) = (home / "models" / name).glob(f"*/{fname}")
    return path


def jpeg(size: tuple[int, int] = (32, 32), seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def classify(
    url: str,
    n_images: int = 1,
    model: str | None = None,
    timeout: float = CLIENT_TIMEOUT,
    size: tuple[int, int] = (32, 32),
) -> httpx.Response:
    files = [("image", (f"{i}.jpg", jpeg(size, i), "image/jpeg")) for i in range(n_images)]
    params = {"model": model} if model else {}
    return httpx.post(url + "/classify", files=files, params=params, timeout=timeout)


def wait_for_exit(server: lt.Server, timeout: float = START_FAIL_TIMEOUT) -> int | None:
    """The server's exit code, or None if it is still running at the deadline or has been seen restarting
    a failed worker twice (BentoML's arbiter respawns workers forever; waiting longer would prove nothing).
    Fails immediately if the server ever reports ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = server.proc.poll()
        if rc is not None:
            return rc
        assert lt.http_get(server.url + "/readyz", timeout=1)[0] != 200, (
            "server became ready with a bad model"
        )
        if server.log_text().count("Initializing service error") >= 2:
            return None
        time.sleep(0.5)
    return None


def assert_refuses_to_start(
    home: Path, tmp_path: Path, *needles: str, extra_args: list[str] | None = None
) -> str:
    server = lt.start_server(
        home,
        tmp_path / "server.log",
        wait=False,
        extra_args=extra_args if extra_args is not None else ["--no-register"],
    )
    try:
        rc = wait_for_exit(server)
        log = server.log_text()
    finally:
        server.stop(10)
    assert rc is not None, (
        "the service did not exit: its worker failed to load the model and BentoML keeps "
        "respawning it, so the service never becomes ready but never stops either:\n" + log[-3000:]
    )
    assert rc != 0, log[-3000:]
    for needle in needles:
        assert needle in log, f"{needle!r} not in the server output:\n{log[-3000:]}"
    return log


# ------------------------------------------------------------------------------------------- start-up faults
@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_corrupt_stored_model_refuses_to_start(damage: str, good_store: Path, tmp_path: Path) -> None:
    home = copy_store(good_store, tmp_path / "home")
    path = stored_model(home)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) - 200] ^= 0x10  # inside the weights payload
    path.write_bytes(bytes(data))
    assert_refuses_to_start(home, tmp_path, str(path), "sha256")


def test_model_swapped_after_registration_fails_checksum(
    good_store: Path, other_bonn: Path, tmp_path: Path
) -> None:
    """A valid .bonn put in place of the registered one passes every format check; the registry's recorded
    sha256 is the only thing that catches it."""
    home = copy_store(good_store, tmp_path / "home")
    path = stored_model(home)
    shutil.copyfile(other_bonn, path)
    assert_refuses_to_start(home, tmp_path, str(path), "does not match its registered sha256")


def test_corrupt_fp_baseline_refuses_to_start(good_store: Path, tmp_path: Path) -> None:
    home = copy_store(good_store, tmp_path / "home")
    path = stored_model(home, "fp-wrn22-16", "model.onnx")
    path.write_bytes(path.read_bytes()[:1000])
    assert_refuses_to_start(home, tmp_path, str(path))


def test_corrupt_shipped_model_stops_serve_before_bentoml(
    model_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """`serve` registers models/ first; a truncated .bonn there must fail that step with the file named."""
    shipped = tmp_path / "models"
    shipped.mkdir()
    bonn, fp = model_files
    (shipped / bonn.name).write_bytes(bonn.read_bytes()[:5000])
    shutil.copyfile(fp, shipped / fp.name)
    log = assert_refuses_to_start(
        tmp_path / "home", tmp_path, bonn.name, extra_args=["--models-dir", str(shipped)]
    )
    assert "Starting production" not in log  # refused before the HTTP server came up


# ------------------------------------------------------------------------------------------- overload
def test_queue_overflow_is_503_with_retry_after(good_store: Path, tmp_path: Path) -> None:
    """With at most 8 queued images and batches that wait 1 s to fill, 6 concurrent 4-image requests
    cannot all be queued: the extra ones must be refused with 503, a reason and Retry-After, while the
    queued ones complete."""
    env = {"BONN_MAX_QUEUE": "8", "BONN_MAX_IMAGES": "8", "BONN_MAX_BATCH": "64", "BONN_MAX_WAIT_MS": "1000",
           "BONN_WORKERS": "1"}
    with lt.start_server(
        good_store, tmp_path / "server.log", env_extra=env, extra_args=["--no-register"]
    ) as srv:
        with ThreadPoolExecutor(6) as pool:
            resps = list(pool.map(lambda _: classify(srv.url, 4), range(6)))
        codes = sorted(r.status_code for r in resps)
        assert set(codes) <= {200, 503} and codes.count(200) >= 2 and codes.count(503) >= 1, codes
        for r in resps:
            if r.status_code == 503:
                body = r.json()
                assert body["error"] == "overloaded" and body["detail"], body
                assert int(r.headers["Retry-After"]) >= 1
            else:
                assert len(r.json()["predictions"]) == 4
        # The queue drained: the service answers normally afterwards.
        assert classify(srv.url).status_code == 200
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
        assert "overloaded" in metrics or "503" in metrics


@pytest.mark.slow
def test_concurrency_limit_sheds_with_503_and_retry_after(good_store: Path, tmp_path: Path) -> None:
    """Above BONN_MAX_CONCURRENCY in-flight requests the service must shed with the documented contract
    (503, JSON {error, detail}, Retry-After), and never queue without bound."""
    env = {
        "BONN_MAX_CONCURRENCY": "2",
        "BONN_MAX_BATCH": "64",
        "BONN_MAX_WAIT_MS": "1000",
        "BONN_WORKERS": "1",
    }
    with lt.start_server(
        good_store, tmp_path / "server.log", env_extra=env, extra_args=["--no-register"]
    ) as srv:
        with ThreadPoolExecutor(12) as pool:
            resps = list(pool.map(lambda _: classify(srv.url, 1), range(12)))
        codes = [r.status_code for r in resps]
        assert codes.count(200) >= 2, codes
        shed = [r for r in resps if r.status_code != 200]
        assert shed, codes
        for r in shed:
            assert r.status_code == 503, f"shed with {r.status_code} {r.text!r}, expected 503"
            assert "Retry-After" in r.headers and r.json().get("detail"), (r.headers, r.text)


# ------------------------------------------------------------------------------------------- crashes, drain
def worker_pids(server: lt.Server) -> list[int]:
    import psutil

    kids = psutil.Process(server.pid).children(recursive=True)
    return [p.pid for p in kids if any("_bentoml_impl.worker" in a for a in p.cmdline())]


@pytest.mark.slow
def test_worker_killed_under_load_recovers_without_hangs(good_store: Path, tmp_path: Path) -> None:
    with lt.start_server(
        good_store, tmp_path / "server.log", env_extra={"BONN_WORKERS": "1"}, extra_args=["--no-register"]
    ) as srv:
        (victim,) = worker_pids(srv)
        outcomes: list[tuple[float, str, float]] = []  # (start, outcome, duration)
        stop = threading.Event()
        t0 = time.monotonic()

        def client(i: int) -> None:
            with httpx.Client(timeout=CLIENT_TIMEOUT) as c:
                while not stop.is_set():
                    start = time.monotonic()
                    try:
                        files = [("image", ("a.jpg", jpeg(seed=i), "image/jpeg"))]
                        outcome = str(c.post(srv.url + "/classify", files=files).status_code)
                    except httpx.TimeoutException:
                        outcome = "timeout"
                    except httpx.TransportError as e:
                        outcome = type(e).__name__
                        time.sleep(0.2)  # a refused connection returns at once; don't spin
                    outcomes.append((start - t0, outcome, time.monotonic() - start))

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(3)
        import os

        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic() - t0
        recovered_at = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            late = [o for s, o, _ in outcomes if s > killed_at + 0.5]
            if late[-5:] == ["200"] * 5:
                recovered_at = time.monotonic() - t0
                break
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(CLIENT_TIMEOUT + 5)
        assert not any(t.is_alive() for t in threads), "a client is stuck"
        kinds = sorted({o for _, o, _ in outcomes})
        after = Counter(o for s, o, _ in outcomes if s >= killed_at)
        longest = max(d for _, _, d in outcomes)
        print(
            f"worker kill: outcomes after the kill {dict(after)}, recovered "
            f"{(recovered_at or float('nan')) - killed_at:.1f} s after it, longest request {longest:.1f} s"
        )
        assert "timeout" not in kinds, f"requests hung past {CLIENT_TIMEOUT} s: {kinds}"
        assert recovered_at is not None, (
            f"no recovery within 120 s; outcomes {kinds}\n{srv.log_text()[-3000:]}"
        )
        bad = [o for _, o, _ in outcomes if o.isdigit() and int(o) >= 500 and o != "503"]
        assert not bad, f"status >= 500 other than 503: {sorted(set(bad))}"
        assert worker_pids(srv) and victim not in worker_pids(srv)


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(good_store: Path, tmp_path: Path) -> None:
    """Requests accepted before SIGTERM complete with 200; the server then exits on its own."""
    env = {"BONN_MAX_BATCH": "64", "BONN_MAX_WAIT_MS": "1000", "BONN_WORKERS": "1"}
    srv = lt.start_server(good_store, tmp_path / "server.log", env_extra=env, extra_args=["--no-register"])
    try:
        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(classify, srv.url, 2) for _ in range(4)]
            time.sleep(0.5)  # the requests are in the batcher, waiting for the batch to fill
            assert not any(f.done() for f in futs)
            srv.proc.send_signal(signal.SIGTERM)
            resps = [f.result(timeout=CLIENT_TIMEOUT + 5) for f in futs]
        assert [r.status_code for r in resps] == [200] * 4, [(r.status_code, r.text[:200]) for r in resps]
        rc = srv.proc.wait(30)
        assert rc is not None
        print(f"SIGTERM drain: 4/4 in-flight requests answered 200, server exited with {rc}")
    finally:
        srv.stop(5)
