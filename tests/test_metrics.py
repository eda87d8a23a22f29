"""bonn_serve.metrics: live gauges of worker processes that died are dropped, not kept forever."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
from bonn_serve import metrics
metrics.update_process_rss()
metrics.QUEUE_IMAGES.labels("m").set(7)
"""


def test_gauges_of_a_dead_worker_are_dropped(tmp_path, monkeypatch):
    """A worker killed without clean-up (SIGKILL, OOM) leaves its RSS and queue gauges in the multiprocess
    directory; they would show in /metrics and /compare, a phantom backlog, until the server restarts."""
    mp = tmp_path / "prom"
    mp.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(mp), PYTHONPATH=str(ROOT))
    worker = subprocess.run([sys.executable, "-c", WORKER], env=env, cwd=ROOT, timeout=120)
    assert worker.returncode == 0
    live = sorted(f.name for f in mp.iterdir() if f.name.startswith("gauge_live"))
    assert live, "the worker wrote no live gauges"
    pid = int(live[0].rsplit("_", 1)[1].split(".")[0])

    from bonn_serve import metrics

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mp))
    keep = mp / f"gauge_livesum_{os.getpid()}.db"  # a live process's file is left alone
    keep.write_bytes(b"")
    assert metrics.forget_dead_processes() == [pid]
    assert not any(f.name.startswith("gauge_live") and f.name.endswith(f"_{pid}.db") for f in mp.iterdir())
    assert keep.exists()
    assert metrics.forget_dead_processes() == []
