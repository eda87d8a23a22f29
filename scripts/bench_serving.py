#!/usr/bin/env python
"""Serving benchmarks behind docs/serving.md: latency at concurrency 1, serving overhead over the raw engine,
adaptive-batching settings under concurrent load, and resident memory per worker (BONN, FP, torch).

    python scripts/bench_serving.py --models-dir DIR --out docs/bench/serving.json \
        [--part latency,batching,memory]

DIR holds bonn-wrn22-16.bonn and fp-wrn22-16.onnx (e.g. `bonn-serve export --arch wrn22-16 --random ...`).
Each server runs on loopback with its own temporary BENTOML_HOME. Load comes from one asyncio client process
(aiohttp), bounded in time. Numbers are medians over interleaved runs; on a shared machine read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
BONN, FP = "bonn-wrn22-16", "fp-wrn22-16"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def test_images(n: int) -> list[bytes]:
    path = Path("/work/shared/data/cifar10/cifar10_mini.npz")
    if path.is_file():
        with np.load(path) as d:
            arrs = list(d["x_test"][:n])
    else:
        rng = np.random.default_rng(0)
        arrs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
    out = []
    for a in arrs:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


class Server:
    def __init__(self, models_dir: Path, **env: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = tempfile.mkdtemp(prefix="bench-home-")
        self.env = {**os.environ, "BENTOML_HOME": self.home, "BENTOML_DO_NOT_TRACK": "true", **env}
        self.cmd = [
            sys.executable,
            "-m",
            "bonn_serve",
            "serve",
            "--models-dir",
            str(models_dir),
            "--port",
            str(self.port),
        ]

    def __enter__(self) -> Server:
        self.log = open(Path(self.home) / "server.log", "wb")
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(600):
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()

    def metric(self, prefix: str) -> dict[str, float]:
        text = requests.get(self.url + "/metrics", timeout=10).text
        return {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if line.startswith(prefix)
        }


# --------------------------------------------------------------------------------------------- latency
def bench_latency(models_dir: Path, threads: int, n: int) -> dict:
    """Concurrency 1: client round trip and server-side timings per model, plus the raw engine / ORT
    forward pass on the same preprocessed image in this process, and the HTTP floor (GET /healthz, which
    BentoML answers without touching our code), in alternating phases so all share the same noise."""
    import onnxruntime as ort

    from bonn_serve.engine import Engine
    from bonn_serve.preprocess import preprocess

    blobs = test_images(64)
    engine = Engine.load(models_dir / f"{BONN}.bonn", threads=threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(models_dir / f"{FP}.onnx"), so, providers=["CPUExecutionProvider"])
    x = preprocess([Image.open(io.BytesIO(blobs[0]))], engine.input_spec)
    raw = {BONN: lambda: engine.predict(x), FP: lambda: sess.run(None, {"input": x})}
    res: dict = {
        m: {
            "client_ms": [],
            "server": {"decode": [], "inference": [], "total": [], "queue": []},
            "raw_engine_ms": [],
        }
        for m in (BONN, FP)
    }
    floor: list[float] = []
    # Phases alternate (HTTP, then raw) rather than single calls: a raw call in this client process right
    # before a request competes with the server for the CPU and inflates the request's time.
    with Server(models_dir, BONN_WORKERS="1", BONN_THREADS=str(threads)) as srv:
        http = requests.Session()
        per_phase = max(1, n // 5)
        for phase in range(6):
            warm = phase == 0
            for model in (BONN, FP):
                for i in range(per_phase):
                    t0 = time.perf_counter()
                    r = http.post(
                        srv.url + "/classify",
                        data=blobs[i % len(blobs)],
                        headers={"Content-Type": "image/png"},
                        params={"model": model, "top_k": "5"},
                    )
                    client = (time.perf_counter() - t0) * 1e3
                    r.raise_for_status()
                    if not warm:
                        res[model]["client_ms"].append(client)
                        for k, v in r.json()["timings_ms"].items():
                            res[model]["server"][k].append(v)
                for _ in range(per_phase // 2):
                    t0 = time.perf_counter()
                    http.get(srv.url + "/healthz").raise_for_status()
                    if not warm:
                        floor.append((time.perf_counter() - t0) * 1e3)
                for _ in range(per_phase):
                    t1 = time.perf_counter()
                    raw[model]()
                    if not warm:
                        res[model]["raw_engine_ms"].append((time.perf_counter() - t1) * 1e3)
    out: dict = {"http_floor_healthz_ms": {"p50": pct(floor, 50), "p99": pct(floor, 99)}}
    for model, d in res.items():
        c50, e50 = pct(d["client_ms"], 50), pct(d["raw_engine_ms"], 50)
        out[model] = {
            "requests": len(d["client_ms"]),
            "client_ms": {"p50": c50, "p90": pct(d["client_ms"], 90), "p99": pct(d["client_ms"], 99)},
            "server_ms": {k: {"p50": pct(v, 50), "p99": pct(v, 99)} for k, v in d["server"].items()},
            "raw_engine_ms": {"p50": e50, "p99": pct(d["raw_engine_ms"], 99)},
            "overhead_ms_p50": {
                "client_minus_raw_engine": c50 - e50,
                "client_minus_raw_engine_minus_http_floor": c50 - e50 - pct(floor, 50),
                "server_total_minus_inference": statistics.median(
                    t - i for t, i in zip(d["server"]["total"], d["server"]["inference"], strict=True)
                ),
            },
        }
    return out


# --------------------------------------------------------------------------------------------- batching
async def closed_loop(url: str, blobs: list[bytes], concurrency: int, seconds: float, model: str) -> dict:
    import aiohttp

    lat, codes = [], {}
    deadline = time.perf_counter() + seconds

    async def user(k: int, session: aiohttp.ClientSession) -> None:
        i = k
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with session.post(
                url + "/classify",
                data=blobs[i % len(blobs)],
                params={"model": model},
                headers={"Content-Type": "image/png"},
            ) as r:
                await r.read()
                codes[r.status] = codes.get(r.status, 0) + 1
                if r.status == 200:
                    lat.append((time.perf_counter() - t0) * 1e3)
            i += concurrency

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(user(k, session) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "ok": len(lat),
        "codes": codes,
        "rps": len(lat) / elapsed,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
    }


def bench_batching(
    models_dir: Path, threads: int, seconds: float, concurrency: int, repeats: int
) -> list[dict]:
    configs = [(1, 0.0), (8, 0.0), (32, 0.0), (32, 2.0), (32, 5.0)]
    blobs = test_images(64)
    rows = {c: [] for c in configs}
    for _ in range(repeats):  # interleave configurations across repeats
        for max_batch, wait in configs:
            with Server(
                models_dir,
                BONN_WORKERS="1",
                BONN_THREADS=str(threads),
                BONN_MAX_BATCH=str(max_batch),
                BONN_MAX_WAIT_MS=str(wait),
                BONN_MODELS=BONN,
            ) as srv:
                asyncio.run(closed_loop(srv.url, blobs, concurrency, 1.0, BONN))  # warm-up
                before = srv.metric("bonn_batch_size_")
                r = asyncio.run(closed_loop(srv.url, blobs, concurrency, seconds, BONN))
                after = srv.metric("bonn_batch_size_")
                key = f'{{backend="bonn-xnor",model="{BONN}"}}'
                n = after[f"bonn_batch_size_count{key}"] - before.get(f"bonn_batch_size_count{key}", 0)
                s = after[f"bonn_batch_size_sum{key}"] - before.get(f"bonn_batch_size_sum{key}", 0)
                r["mean_batch"] = s / n if n else None
                rows[(max_batch, wait)].append(r)
    out = []
    for (max_batch, wait), runs in rows.items():
        out.append(
            {
                "max_batch": max_batch,
                "max_wait_ms": wait,
                "concurrency": concurrency,
                "runs": runs,
                "rps_median": statistics.median(r["rps"] for r in runs),
                "p50_ms_median": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms_median": statistics.median(r["p99_ms"] for r in runs),
                "mean_batch_median": statistics.median(r["mean_batch"] or 0 for r in runs),
            }
        )
    return out


# --------------------------------------------------------------------------------------------- hand-off
def bench_handoff(models_dir: Path, threads: int, n: int) -> dict:
    """In-process (ASGI, no sockets): /classify round trip with the engine call on its thread
    (BONN_INLINE_MS=0) vs on the event loop (inline), alternating, against the raw engine call."""
    import dataclasses

    import httpx

    from bonn_serve import registry
    from bonn_serve.backends import LoadedModel
    from bonn_serve.classifier import Classifier
    from bonn_serve.engine import Engine
    from bonn_serve.http_api import build_app
    from bonn_serve.preprocess import preprocess
    from bonn_serve.settings import load_settings

    engine = Engine.load(models_dir / f"{BONN}.bonn", threads=threads)
    entry = registry.ModelEntry(BONN, "bench", "bonn", registry.BONN_BACKEND, models_dir / f"{BONN}.bonn")
    blob = test_images(1)[0]
    x = preprocess([Image.open(io.BytesIO(blob))], engine.input_spec)
    apps = {}
    for label, inline_ms in (("thread", 0.0), ("inline", 2.0)):
        settings = dataclasses.replace(load_settings(), inline_ms=inline_ms)
        loaded = LoadedModel(entry, engine.predict, engine.classes, engine.input_spec, 0, 0, 0.0)
        clf = Classifier(settings, [loaded])
        apps[label] = build_app(lambda clf=clf: clf)
    times: dict[str, list[float]] = {"thread": [], "inline": [], "raw_engine": []}

    async def run() -> None:
        clients = {
            k: httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://b")
            for k, a in apps.items()
        }
        for phase in range(6):
            for label, client in clients.items():
                for _ in range(n // 5):
                    t0 = time.perf_counter()
                    r = await client.post("/classify", content=blob, headers={"Content-Type": "image/png"})
                    if phase:
                        times[label].append((time.perf_counter() - t0) * 1e3)
                    r.raise_for_status()
            for _ in range(n // 5):
                t0 = time.perf_counter()
                engine.predict(x)
                if phase:
                    times["raw_engine"].append((time.perf_counter() - t0) * 1e3)
        for c in clients.values():
            await c.aclose()

    asyncio.run(run())
    return {k: {"p50_ms": pct(v, 50), "p90_ms": pct(v, 90), "n": len(v)} for k, v in times.items()}


# --------------------------------------------------------------------------------------------- memory
def worker_rss(srv: Server) -> float:
    vals = [v for k, v in srv.metric("bonn_process_resident_bytes").items()]
    return max(vals)


def torch_server_rss(threads: int) -> dict:
    """RSS of the worker of a torch-based BentoML server (scripts/torch_service.py) after 20 requests."""
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tempfile.mkdtemp(prefix="bench-torch-")
    env = {**os.environ, "BENTOML_HOME": home, "BENTOML_DO_NOT_TRACK": "true"}
    cmd = [sys.executable, "-m", "bentoml", "serve", "torch_service:TorchFP", "--port", str(port)]
    log = open(Path(home) / "server.log", "wb")
    proc = subprocess.Popen(
        cmd, cwd=REPO / "scripts", env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            return {"error": "torch server did not start"}
        blob = test_images(1)[0]
        for _ in range(20):
            requests.post(url + "/classify", files={"image": ("a.png", blob, "image/png")}).raise_for_status()
        procs = psutil.Process(proc.pid).children(recursive=True)
        rss = sorted(p.memory_info().rss for p in procs)
        return {"worker_rss_mib": rss[-1] / 2**20, "threads": threads}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def bench_memory(models_dir: Path, threads: int) -> dict:
    blob = test_images(1)[0]
    out = {}
    for label, models in (("bonn_only", BONN), ("fp_only", FP), ("both", f"{BONN},{FP}")):
        with Server(models_dir, BONN_WORKERS="1", BONN_THREADS=str(threads), BONN_MODELS=models) as srv:
            for m in models.split(","):
                for _ in range(20):
                    requests.post(
                        srv.url + "/classify",
                        data=blob,
                        headers={"Content-Type": "image/png"},
                        params={"model": m},
                    ).raise_for_status()
            requests.get(srv.url + "/compare")  # refreshes the RSS gauge
            out[label] = {
                "worker_rss_mib": worker_rss(srv) / 2**20,
                "model_resident_mib": {
                    k.split('model="')[1].rstrip('"}'): v / 2**20
                    for k, v in srv.metric("bonn_model_resident_bytes{").items()
                },
            }
    out["torch_server"] = torch_server_rss(threads)
    base = subprocess.run(
        [
            sys.executable,
            "-c",
            "import bentoml, onnxruntime, numpy, PIL;"
            "print(int(open('/proc/self/statm').read().split()[1])*4096/2**20)",
        ],
        capture_output=True,
        text=True,
        cwd="/",
    )
    out["bentoml_onnxruntime_import_rss_mib"] = float(base.stdout.strip())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--part", default="latency,handoff,batching,memory")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }
    parts = args.part.split(",")
    result.setdefault("loadavg_at_part_start", {})
    for part in parts:  # recorded up front: the machine is shared, so say how busy it was
        result["loadavg_at_part_start"][part] = None
    if "latency" in parts:
        result["loadavg_at_part_start"]["latency"] = os.getloadavg()
        result["latency"] = bench_latency(args.models_dir, args.threads, args.requests)
        print(json.dumps(result["latency"], indent=1))
    if "handoff" in parts:
        result["loadavg_at_part_start"]["handoff"] = os.getloadavg()
        result["handoff"] = bench_handoff(args.models_dir, args.threads, args.requests)
        print(json.dumps(result["handoff"], indent=1))
    if "batching" in parts:
        result["loadavg_at_part_start"]["batching"] = os.getloadavg()
        result["batching"] = bench_batching(
            args.models_dir, args.threads, args.seconds, args.concurrency, args.repeats
        )
        for row in result["batching"]:
            print({k: v for k, v in row.items() if k != "runs"})
    if "memory" in parts:
        result["loadavg_at_part_start"]["memory"] = os.getloadavg()
        result["memory"] = bench_memory(args.models_dir, args.threads)
        print(json.dumps(result["memory"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
