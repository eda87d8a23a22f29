"""Prometheus metrics of the classifier service, and reading them back for /compare.

Plain prometheus_client objects at module level: BentoML serves them on its own /metrics next to its built-in
`bentoml_service_*` series and, with several workers, aggregates them through PROMETHEUS_MULTIPROC_DIR
(gauges declare how to merge across processes).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Fine buckets from 0.1 ms to 5 s (then up to 60 s) so percentiles interpolated from them are within a few percent.
LATENCY_BUCKETS = (
    0.0001,
    0.0002,
    0.0003,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,  # the client and BentoML time out at 30-60 s: a p99 past 5 s must not read as 5 s
    60.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

INFERENCE_SECONDS = Histogram(
    "bonn_inference_seconds",
    "Engine time per batch (one forward pass)",
    ["model", "backend"],
    buckets=LATENCY_BUCKETS,
)
REQUEST_SECONDS = Histogram(
    "bonn_request_seconds",
    "End-to-end /classify time per successful request (read body to response)",
    ["model", "backend"],
    buckets=LATENCY_BUCKETS,
)
DECODE_SECONDS = Histogram(
    "bonn_decode_seconds",
    "Image decode + preprocessing time per request",
    ["model", "backend"],
    buckets=LATENCY_BUCKETS,
)
BATCH_IMAGES = Histogram(
    "bonn_batch_size",
    "Images per engine batch (after adaptive batching)",
    ["model", "backend"],
    buckets=BATCH_BUCKETS,
)
IMAGES = Counter("bonn_images_classified", "Images classified", ["model", "backend"])
ERRORS = Counter("bonn_errors", "Rejected or failed /classify requests", ["reason"])
WEIGHT_BYTES = Gauge(
    "bonn_model_weight_bytes",
    "Bytes of model weights as stored/loaded",
    ["model", "backend"],
    multiprocess_mode="max",
)
MODEL_RSS_BYTES = Gauge(
    "bonn_model_resident_bytes",
    "Resident memory added by loading the model (per worker)",
    ["model", "backend"],
    multiprocess_mode="max",
)
PROCESS_RSS = Gauge(
    "bonn_process_resident_bytes",
    "Resident memory of each serving worker process",
    multiprocess_mode="liveall",
)
QUEUE_IMAGES = Gauge(
    "bonn_queue_images", "Images waiting for the engine", ["model"], multiprocess_mode="livesum"
)


def process_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def update_process_rss() -> int:
    rss = process_rss()
    PROCESS_RSS.set(rss)
    return rss


def forget_dead_processes() -> list[int]:
    """Drop the live gauges (RSS, queue) of worker processes that no longer exist. prometheus_client only does
    this when told (`mark_process_dead`), which a SIGKILLed or OOM-killed worker never does: its last RSS and
    queue length would stay in /metrics and /compare until the server restarts. Returns the pids dropped."""
    import re

    import psutil
    from prometheus_client import multiprocess

    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
    if not mp_dir or not os.path.isdir(mp_dir):
        return []
    pids = {int(m.group(1)) for f in os.listdir(mp_dir) if (m := re.fullmatch(r"gauge_live\w+?_(\d+)\.db", f))}
    dead = sorted(pid for pid in pids if not psutil.pid_exists(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, mp_dir)
    return dead


def _registry() -> Any:
    """All processes' samples when running under BentoML's multiprocess mode, else this process's."""
    from prometheus_client import REGISTRY, multiprocess

    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
    if mp_dir and os.path.isdir(mp_dir):
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg, path=mp_dir)
        return reg
    return REGISTRY


def histogram_snapshot(metric: str) -> dict[tuple[str, ...], dict[str, Any]]:
    """{(model, backend): {"buckets": [(le, cumulative count)...], "count": n, "sum": s}} for a histogram."""
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for fam in _registry().collect():
        if fam.name != metric:
            continue
        for s in fam.samples:
            key = (s.labels.get("model", ""), s.labels.get("backend", ""))
            d = out.setdefault(key, {"buckets": {}, "count": 0.0, "sum": 0.0})
            if s.name.endswith("_bucket"):
                le = float("inf") if s.labels["le"] in ("+Inf", "inf") else float(s.labels["le"])
                d["buckets"][le] = d["buckets"].get(le, 0.0) + s.value
            elif s.name.endswith("_count"):
                d["count"] += s.value
            elif s.name.endswith("_sum"):
                d["sum"] += s.value
    for d in out.values():
        d["buckets"] = sorted(d["buckets"].items())
    return out


def counter_values(metric: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for fam in _registry().collect():
        if fam.name != metric:
            continue
        for s in fam.samples:
            if s.name.endswith("_total"):
                key = (s.labels.get("model", ""), s.labels.get("backend", ""))
                out[key] = out.get(key, 0.0) + s.value
    return out


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q * count."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le  # beyond the largest finite bucket: report its bound
            width = count - prev_count
            frac = (rank - prev_count) / width if width > 0 else 1.0
            return prev_le + (le - prev_le) * frac
        prev_le, prev_count = le, count
    return prev_le
