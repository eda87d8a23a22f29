"""Helpers for the tests that run the real HTTP server: random models, a free port, start/stop the server."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from bonn_serve import loadtest

REPO = Path(__file__).resolve().parents[1]
BONN_NAME, FP_NAME = "bonn-wrn22-16", "fp-wrn22-16"


def export_random_models(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """A random wrn22-16 BONN (.bonn) and its FP baseline (.onnx), through the real exporter (needs torch)."""
    pytest.importorskip("torch")
    bonn, fp = loadtest.export_random_models(out_dir, seed=seed, arch="wrn22-16")
    assert (bonn.stem, fp.stem) == (BONN_NAME, FP_NAME)
    return bonn, fp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bonn-serve serve` on loopback with its own BENTOML_HOME; registers `models_dir` on start."""

    def __init__(
        self,
        models_dir: Path,
        home: Path,
        log: Path,
        python: str = sys.executable,
        cwd: Path = REPO,
        **env: str,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.env = {
            **os.environ,
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "BONN_WORKERS": "1",
            "BONN_THREADS": "1",
            **env,
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.cmd = [
            python,
            "-m",
            "bonn_serve",
            "serve",
            "--models-dir",
            str(models_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> Server:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(
                signal.SIGTERM
            )  # the arbiter (exec'd by bonn-serve serve) stops its workers
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own session: the arbiter and its workers
                self.proc.wait(10)
        self._log.close()
        self.proc = None


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h but carries no pixel data: exercises the header-only size checks."""

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def synthetic_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random RGB images of assorted sizes (exercise resize + center crop)."""
    rng = np.random.default_rng(seed)
    sizes = [(32, 32), (48, 40), (40, 64), (33, 97)]
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR)))
    return out


def cifar_images(n: int) -> list[np.ndarray] | None:
    from _data import CIFAR_DIR

    path = CIFAR_DIR / "cifar10_mini.npz"
    if not path.is_file():
        return None
    with np.load(path) as d:
        x = d["x_test"] if "x_test" in d.files else d["x"]
        return list(x[:n])
