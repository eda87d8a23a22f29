"""Serving settings from environment variables, with defaults computed from the CPUs this process may use.

Workers x threads never exceeds the usable cores: each worker holds its own copy of every model and runs its
engine on `threads` threads, so oversubscribing only adds contention.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger("bonn_serve")


def usable_cpus() -> int:
    """CPUs in this process's affinity mask, further capped by a cgroup v2 CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _int_env(name: str, default: int, lo: int, hi: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name}={v} is out of range [{lo}, {hi}]")
    return v


def _float_env(name: str, default: float, lo: float, hi: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name}={v} is out of range [{lo}, {hi}]")
    return v


@dataclass(frozen=True)
class Settings:
    cpus: int
    workers: int  # BONN_WORKERS: server processes, each with every model loaded
    threads: int  # BONN_THREADS: engine / onnxruntime threads per worker
    max_batch: int  # BONN_MAX_BATCH: images per engine call
    max_wait_ms: float  # BONN_MAX_WAIT_MS: how long a batch may wait to fill (0 = take what is queued)
    inline_ms: float  # BONN_INLINE_MS: batches expected to take at most this run on the event loop
    max_queue: int  # BONN_MAX_QUEUE: queued images per model before 503
    max_images: int  # BONN_MAX_IMAGES: images per request
    max_body_bytes: int  # BONN_MAX_BODY_BYTES: request body limit (413 above)
    max_pixels: int  # BONN_MAX_PIXELS: pixels per image (413 above)
    max_concurrency: int  # BONN_MAX_CONCURRENCY: in-flight requests per worker (BentoML traffic limit)
    models: tuple[str, ...]  # BONN_MODELS: registry tags to serve (empty = every registered bonn-serve model)
    default_model: str  # BONN_DEFAULT_MODEL: used when a request names none (empty = first BONN)


def load_settings() -> Settings:
    cpus = usable_cpus()
    workers = _int_env("BONN_WORKERS", 1, 1, 256)
    if workers > cpus:
        logger.warning("BONN_WORKERS=%d exceeds the %d usable CPUs; using %d", workers, cpus, cpus)
        workers = cpus
    threads = _int_env("BONN_THREADS", max(1, cpus // workers), 1, 256)
    if workers * threads > cpus:
        capped = max(1, cpus // workers)
        logger.warning(
            "BONN_WORKERS x BONN_THREADS = %d x %d exceeds %d CPUs; using %d threads",
            workers,
            threads,
            cpus,
            capped,
        )
        threads = capped
    models = tuple(t.strip() for t in os.environ.get("BONN_MODELS", "").split(",") if t.strip())
    max_queue, max_images = _int_env("BONN_MAX_QUEUE", 256, 1, 100_000), _int_env("BONN_MAX_IMAGES", 32, 1, 1024)
    if max_images > max_queue:  # such a request could never be queued, yet would be told to retry (503)
        raise ValueError(f"BONN_MAX_IMAGES ({max_images}) must not exceed BONN_MAX_QUEUE ({max_queue})")
    return Settings(
        cpus=cpus,
        workers=workers,
        threads=threads,
        max_batch=_int_env("BONN_MAX_BATCH", 32, 1, 1024),
        max_wait_ms=_float_env("BONN_MAX_WAIT_MS", 0.0, 0.0, 1000.0),
        inline_ms=_float_env("BONN_INLINE_MS", 2.0, 0.0, 1000.0),
        max_queue=max_queue,
        max_images=max_images,
        max_body_bytes=_int_env("BONN_MAX_BODY_BYTES", 8 << 20, 1024, 1 << 30),
        max_pixels=_int_env("BONN_MAX_PIXELS", 24_000_000, 1, 1 << 31),
        max_concurrency=_int_env("BONN_MAX_CONCURRENCY", 64, 1, 10_000),
        models=models,
        default_model=os.environ.get("BONN_DEFAULT_MODEL", "").strip(),
    )
