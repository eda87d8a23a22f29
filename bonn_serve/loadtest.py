"""Load-test runner: start bonn-serve on loopback, drive it with Locust in a subprocess, summarise, gate.

Locust is never imported here (it gevent-monkey-patches whatever process imports it); it runs as
`python -m locust` in its own process. The server also runs as a subprocess (`python -m bonn_serve serve`),
so this module can be used from pytest and from `bonn-serve loadtest` alike.

Outputs in the run directory: `<prefix>_stats.csv`/`_failures.csv`/... (Locust CSV), `<prefix>.html`
(Locust report), `<prefix>.json` (Locust stats), `<prefix>_outcomes.json` (per-request outcome kinds from the
locustfile), `summary.json` (rps and p50/p95/p99 per request name and per route, failures by kind, shed
count, soak RSS samples, threshold verdicts) and `server.log`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHED_SUFFIXES = {"503": " (503 shed)", "429": " (429 shed)"}  # must match loadtests/locustfile.py
FAILURE_KINDS = ("http_5xx", "http_4xx", "bad_body", "timeout", "connection", "task_error")
REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ paths
def default_locustfile() -> Path:
    """The repo's loadtests/locustfile.py (loadtests/ is not part of the installed package)."""
    for cand in (REPO_ROOT / "loadtests" / "locustfile.py", Path.cwd() / "loadtests" / "locustfile.py"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        "loadtests/locustfile.py not found next to the package or in the current directory; pass --locustfile"
    )


def default_thresholds() -> Path:
    for cand in (REPO_ROOT / "loadtests" / "thresholds.yaml", Path.cwd() / "loadtests" / "thresholds.yaml"):
        if cand.is_file():
            return cand
    raise FileNotFoundError("loadtests/thresholds.yaml not found; pass --thresholds")


# ------------------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET -> (status, body); status 0 when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def server_env(bentoml_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1"})
    # The package must be importable from the server subprocess even when it is only on our sys.path.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def register_models(
    bentoml_home: Path,
    bonn: Path,
    fp: Path | None = None,
    env_extra: dict[str, str] | None = None,
    timeout: float = 180,
) -> None:
    """`bonn-serve register` in a subprocess (keeps bentoml's global store state out of this process)."""
    cmd = [sys.executable, "-m", "bonn_serve", "register", str(bonn)] + (["--fp", str(fp)] if fp else [])
    r = subprocess.run(
        cmd,
        check=False,
        env=server_env(bentoml_home, env_extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise RuntimeError(f"bonn-serve register failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")


def export_random_models(
    out_dir: Path, seed: int = 0, arch: str = "wrn22-16", timeout: float = 300
) -> tuple[Path, Path]:
    """A randomly initialised BONN + its FP ONNX baseline via `bonn-serve export --random` (needs the train
    extra, i.e. torch, in the exporting subprocess only). Returns (bonn, fp) named as `register_dir` expects."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bonn, fp = out_dir / f"bonn-{arch}.bonn", out_dir / f"fp-{arch}.onnx"
    cmd = [
        sys.executable,
        "-m",
        "bonn_serve",
        "export",
        "--arch",
        arch,
        "--random",
        "--seed",
        str(seed),
        "--out",
        str(bonn),
        "--onnx-fp",
        str(fp),
    ]
    r = subprocess.run(
        cmd, check=False, env=server_env(out_dir), capture_output=True, text=True, timeout=timeout
    )
    if r.returncode != 0:
        raise RuntimeError(f"bonn-serve export failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return bonn, fp


@dataclass
class Server:
    """A `bonn-serve serve` subprocess on loopback."""

    proc: subprocess.Popen
    url: str
    bentoml_home: Path
    log_path: Path
    _log: Any = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} before it was ready:\n"
                    f"{self.log_text()[-4000:]}"
                )
            if http_get(self.url + "/readyz", timeout=2)[0] == 200:
                return
            time.sleep(0.25)
        raise TimeoutError(f"server not ready after {timeout:.0f} s:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the arbiter (graceful drain), then SIGKILL the whole process group if it lingers."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(self.proc)
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> Server:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill what is left of the server's own process group (workers orphaned by a crash)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def start_server(
    bentoml_home: Path,
    log_path: Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    env_extra: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    wait: bool = True,
    ready_timeout: float = 180.0,
) -> Server:
    """Start `bonn-serve serve` in its own process group; by default wait until /readyz answers 200."""
    port = port or free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - stays open for the server's lifetime; Server.stop closes it
    cmd = [sys.executable, "-m", "bonn_serve", "serve", "--host", host, "--port", str(port)] + (
        extra_args or []
    )
    proc = subprocess.Popen(
        cmd,
        env=server_env(bentoml_home, env_extra),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=str(REPO_ROOT),
    )
    server = Server(proc, f"http://{host}:{port}", bentoml_home, log_path, log)
    if wait:
        try:
            server.wait_ready(ready_timeout)
        except BaseException:
            server.stop(5)
            raise
    return server


# ------------------------------------------------------------------------------------------------ RSS
def tree_rss(pid: int, leaves_only: bool = False) -> int:
    """Resident bytes of a process and all its descendants (the arbiter and its workers). `leaves_only`: only
    the processes with no children of their own, i.e. the serving workers, so the arbiter's static memory does
    not dilute their growth (and pages a fork shares are not counted twice)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
        if leaves_only:
            procs = [p for p in procs if not p.children()] or [root]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class RssSampler(threading.Thread):
    """Samples the workers' RSS (tree_rss(pid, leaves_only=True)) every `interval` seconds into `samples`
    [(seconds since start, bytes)]: the soak gate is about the processes that serve."""

    def __init__(self, pid: int, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self._stop_event.is_set():
            self.samples.append((round(time.monotonic() - t0, 2), tree_rss(self.pid, leaves_only=True)))
            self._stop_event.wait(self.interval)

    def stop(self) -> list[tuple[float, int]]:
        self._stop_event.set()
        self.join(10)
        return self.samples


def rss_growth(samples: list[tuple[float, int]], warmup_s: float, window_s: float = 60.0) -> dict[str, Any]:
    """Growth of the median RSS in the last `window_s` over the median in the first `window_s` after warm-up.
    Medians, not single points, so one transient allocation does not decide the verdict."""
    after = [(t, r) for t, r in samples if t >= warmup_s and r > 0]
    if len(after) < 4:
        return {"ok": False, "reason": f"only {len(after)} RSS samples after the {warmup_s:.0f} s warm-up"}
    t_end = after[-1][0]
    window_s = min(window_s, (t_end - warmup_s) / 3)
    first = sorted(r for t, r in after if t <= warmup_s + window_s) or [after[0][1]]
    last = sorted(r for t, r in after if t >= t_end - window_s) or [after[-1][1]]
    base, end = first[len(first) // 2], last[len(last) // 2]
    return {
        "baseline_bytes": base,
        "end_bytes": end,
        "max_bytes": max(r for _, r in after),
        "growth": (end - base) / base,
        "warmup_s": warmup_s,
        "window_s": round(window_s, 1),
        "samples_after_warmup": len(after),
        "ok": True,
    }


# ------------------------------------------------------------------------------------------------ locust
@dataclass
class LocustConfig:
    host: str
    users: int = 8
    spawn_rate: float = 4.0
    duration_s: int = 60
    models: str = "bonn,fp"
    mix: str = "full"
    fp_model: str | None = None
    locustfile: Path | None = None
    client_timeout_s: float = 30.0
    think_ms: float = 50.0  # each user waits 0..think_ms between requests (0: closed loop)


def run_locust(cfg: LocustConfig, out_dir: Path, prefix: str = "locust") -> dict[str, Any]:
    """Run Locust headless for cfg.duration_s; returns the summary of the run (see `summarize`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / prefix
    outcomes = out_dir / f"{prefix}_outcomes.json"
    outcomes.unlink(missing_ok=True)  # a reused --out must not lend this run an earlier run's counts
    env = dict(os.environ)
    env.update(
        {
            "LOADTEST_MODELS": cfg.models,
            "LOADTEST_MIX": cfg.mix,
            "LOADTEST_OUTCOMES": str(outcomes),
            "LOADTEST_TIMEOUT": str(cfg.client_timeout_s),
            "LOADTEST_THINK_MS": str(cfg.think_ms),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if cfg.fp_model:
        env["LOADTEST_FP_MODEL"] = cfg.fp_model
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(cfg.locustfile or default_locustfile()),
        "--headless",
        "-u",
        str(cfg.users),
        "-r",
        str(cfg.spawn_rate),
        "-t",
        f"{cfg.duration_s}s",
        "--host",
        cfg.host,
        "--csv",
        str(base),
        "--html",
        f"{base}.html",
        "--json-file",
        str(base),
        "--exit-code-on-error",
        "0",
        "--only-summary",
        "--stop-timeout",
        "10",
        "--loglevel",
        "WARNING",
    ]
    with open(out_dir / f"{prefix}.log", "wb") as log:
        t0 = time.monotonic()
        try:
            rc = subprocess.run(
                cmd, check=False, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=cfg.duration_s + 90
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        wall = time.monotonic() - t0
    log_text = (out_dir / f"{prefix}.log").read_text(errors="replace")
    stats_path = Path(f"{base}.json")
    if rc != 0 or not stats_path.is_file():
        raise RuntimeError(f"locust failed (rc={rc}); see {out_dir / (prefix + '.log')}:\n{log_text[-3000:]}")
    stats = json.loads(stats_path.read_text())
    outc = json.loads(outcomes.read_text()) if outcomes.is_file() else {}
    summary = summarize(stats, outc)
    summary["config"] = {
        "users": cfg.users,
        "spawn_rate": cfg.spawn_rate,
        "duration_s": cfg.duration_s,
        "models": cfg.models,
        "mix": cfg.mix,
        "think_ms": cfg.think_ms,
        "host": cfg.host,
        "locust_wall_s": round(wall, 1),
    }
    return summary


def percentile(response_times: dict[Any, int], q: float) -> float | None:
    """Percentile from Locust's {rounded ms: count} histogram (the same rounding Locust reports)."""
    items = sorted((float(k), int(v)) for k, v in response_times.items())
    total = sum(v for _, v in items)
    if total == 0:
        return None
    need, seen = q * total, 0
    for ms, count in items:
        seen += count
        if seen >= need:
            return ms
    return items[-1][0]


def _merge_times(entries: list[dict[str, Any]]) -> dict[float, int]:
    merged: dict[float, int] = {}
    for e in entries:
        for k, v in (e.get("response_times") or {}).items():
            merged[float(k)] = merged.get(float(k), 0) + int(v)
    return merged


def _block(entries: list[dict[str, Any]]) -> dict[str, Any]:
    n = sum(e["num_requests"] for e in entries)
    fails = sum(e["num_failures"] for e in entries)
    start = min((e["start_time"] for e in entries if e.get("start_time")), default=None)
    end = max((e["last_request_timestamp"] for e in entries if e.get("last_request_timestamp")), default=None)
    span = (end - start) if start and end and end > start else None
    times = _merge_times(entries)
    total_ms = sum(e.get("total_response_time", 0) for e in entries)
    return {
        "requests": n,
        "failures": fails,
        "rps": round(n / span, 2) if span else None,
        "mean_ms": round(total_ms / n, 1) if n else None,
        "p50_ms": percentile(times, 0.50),
        "p95_ms": percentile(times, 0.95),
        "p99_ms": percentile(times, 0.99),
        "max_ms": max(times) if times else None,
    }


def summarize(stats: list[dict[str, Any]], outcomes: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Locust's JSON stats + the locustfile's outcome counts -> per-name and per-route numbers."""

    def shed_status(name: str) -> str | None:
        return next((code for code, suffix in SHED_SUFFIXES.items() if name.endswith(suffix)), None)

    answered = [e for e in stats if shed_status(e["name"]) is None]
    shed = [e for e in stats if shed_status(e["name"]) is not None]
    classify = [e for e in answered if e["name"].split(" ", 1)[0] in ("bonn", "fp")]
    span_entries = [e for e in stats if e["num_requests"]]
    all_block = _block(span_entries) if span_entries else {"requests": 0, "rps": None}
    per_name = {e["name"]: _block([e]) for e in classify}
    routes = sorted({e["name"].split(" ", 1)[0] for e in classify})
    # Route throughput: answered requests over the route's first-to-last request (shed ones are counted apart).
    per_route = {r: _block([e for e in classify if e["name"].startswith(r + " ")]) for r in routes}
    for r in routes:
        for code in SHED_SUFFIXES:
            per_route[r][f"shed_{code}"] = sum(
                e["num_requests"]
                for e in shed
                if e["name"].startswith(r + " ") and shed_status(e["name"]) == code
            )
    kinds: dict[str, int] = {}
    for counts in outcomes.values():
        for kind, n in counts.items():
            if kind in FAILURE_KINDS:
                kinds[kind] = kinds.get(kind, 0) + n
    # Locust's own count is the floor: the outcome file explains failures but may lack some (a custom
    # locustfile, a write that failed), and a failure must never pass as a success.
    unexplained = sum(e["num_failures"] for e in classify) - sum(kinds.values())
    if unexplained > 0:
        kinds["unclassified"] = unexplained
    # Failures Locust saw that the outcome file cannot have (e.g. GET /models in on_start).
    other = sum(e["num_failures"] for e in answered if e not in classify)
    if other:
        kinds["other"] = other
    n_shed = sum(e["num_requests"] for e in shed)
    by_code = {
        code: sum(e["num_requests"] for e in shed if shed_status(e["name"]) == code) for code in SHED_SUFFIXES
    }
    n_total = all_block["requests"]
    return {
        "total": all_block,
        "routes": per_route,
        "names": per_name,
        "failures": sum(kinds.values()),
        "failures_by_kind": kinds,
        "shed_503": by_code["503"],
        "shed_429": by_code["429"],
        "shed_ratio": round(n_shed / n_total, 4) if n_total else 0.0,
        "outcomes": outcomes,
    }


# ------------------------------------------------------------------------------------------------ thresholds
def load_thresholds(path: Path, profile: str) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    profiles = (doc or {}).get("profiles") or {}
    if profile not in profiles:
        raise KeyError(f"{path}: no profile {profile!r} (have: {', '.join(profiles)})")
    return dict(profiles[profile] or {})


def check_thresholds(summary: dict[str, Any], thr: dict[str, Any]) -> list[str]:
    """Every broken gate as a sentence; empty when the run passes."""
    broken: list[str] = []
    if "max_failures" in thr and summary["failures"] > thr["max_failures"]:
        broken.append(
            f"{summary['failures']} failed requests (limit {thr['max_failures']}): "
            f"{summary['failures_by_kind']}"
        )
    if "max_shed_ratio" in thr and summary["shed_ratio"] > thr["max_shed_ratio"]:
        broken.append(f"shed ratio {summary['shed_ratio']:.3f} > {thr['max_shed_ratio']}")
    routes = summary["routes"]
    for r in thr.get("routes", []) or []:
        if r not in routes:
            broken.append(f"route {r!r} got no answered requests")
    for r, b in routes.items():
        if "min_requests_per_route" in thr and b["requests"] < thr["min_requests_per_route"]:
            broken.append(f"{r}: {b['requests']} answered requests < {thr['min_requests_per_route']}")
        for q in ("p50", "p95", "p99"):
            lim = thr.get(f"max_{q}_ms")
            if lim is not None and b[f"{q}_ms"] is not None and b[f"{q}_ms"] > lim:
                broken.append(f"{r}: {q} {b[f'{q}_ms']:.0f} ms > {lim} ms")
    if "min_rps" in thr and (summary["total"].get("rps") or 0) < thr["min_rps"]:
        broken.append(f"total {summary['total'].get('rps')} req/s < {thr['min_rps']}")
    soak = summary.get("soak")
    if soak is not None and "max_rss_growth" in thr:
        if not soak.get("ok"):
            broken.append(f"soak: {soak.get('reason')}")
        elif soak["growth"] > thr["max_rss_growth"]:
            broken.append(f"soak: RSS grew {soak['growth'] * 100:.1f}% > {thr['max_rss_growth'] * 100:.0f}%")
    return broken


# ------------------------------------------------------------------------------------------------ side-by-side
def compare_table(runs: dict[str, list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], float | None]:
    """Medians over rounds per route -> rows, and the BONN/FP throughput ratio (medians of per-round ratios)."""

    def med(xs: list[float]) -> float | None:
        xs = sorted(x for x in xs if x is not None)
        return (
            xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2 if xs else None
        )

    rows = []
    for route, summaries in runs.items():
        blocks = [s["routes"].get(route, {}) for s in summaries]
        rows.append(
            {
                "route": route,
                "rounds": len(summaries),
                **{k: med([b.get(k) for b in blocks]) for k in ("rps", "p50_ms", "p95_ms", "p99_ms")},
                "requests": sum(b.get("requests", 0) for b in blocks),
                "failures": sum(s["failures"] for s in summaries),
                "shed": sum(s["shed_503"] + s.get("shed_429", 0) for s in summaries),
            }
        )
    ratios = [
        b["routes"]["bonn"]["rps"] / f["routes"]["fp"]["rps"]
        for b, f in zip(runs.get("bonn", []), runs.get("fp", []))
        if b["routes"].get("bonn", {}).get("rps") and f["routes"].get("fp", {}).get("rps")
    ]
    return rows, med(ratios)


def compare_markdown(rows: list[dict[str, Any]], ratio: float | None) -> str:
    lines = [
        "| route | rounds | requests | req/s (median) | p50 ms | p95 ms | p99 ms | failures | shed (503/429) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    def num(v: float | None, fmt: str) -> str:  # a route that answered nothing has no rate or latency
        return "–" if v is None else format(v, fmt)

    for r in rows:
        lines.append(
            f"| {r['route']} | {r['rounds']} | {r['requests']} | {num(r['rps'], '.1f')} | {num(r['p50_ms'], '.0f')} | "
            f"{num(r['p95_ms'], '.0f')} | {num(r['p99_ms'], '.0f')} | {r['failures']} | {r['shed']} |"
        )
    if ratio is not None:
        lines.append("")
        lines.append(f"BONN/FP throughput ratio (median of per-round ratios): **{ratio:.2f}x**")
    return "\n".join(lines)


def compare_chart(rows: list[dict[str, Any]], ratio: float | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routes = [r["route"] for r in rows]
    colors = {"bonn": "#1f77b4", "fp": "#ff7f0e"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(
        [r.upper() for r in routes], [r["rps"] or 0 for r in rows], color=[colors.get(r, "grey") for r in routes]
    )
    ax1.set_ylabel("requests / s (median over rounds)")
    ax1.set_title("Throughput" + (f" (BONN/FP = {ratio:.2f}x)" if ratio else ""))
    qs = ["p50_ms", "p95_ms", "p99_ms"]
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(qs))]
        ax2.bar(xs, [r[q] or 0 for q in qs], width, label=r["route"].upper(), color=colors.get(r["route"], "grey"))
    ax2.set_xticks(range(len(qs)), ["p50", "p95", "p99"])
    ax2.set_ylabel("latency (ms)")
    ax2.set_title("Latency percentiles")
    ax2.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ orchestration
@dataclass
class RunOptions:
    out_dir: Path
    profile: str = "default"
    thresholds: Path | None = None
    host: str | None = None  # an already running server; otherwise one is started
    bentoml_home: Path | None = None
    port: int | None = None
    bonn: Path | None = None  # register these into the store before serving
    fp: Path | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    locust: LocustConfig = field(default_factory=lambda: LocustConfig(host=""))
    soak: bool = False
    soak_warmup_s: float | None = None
    compare: bool = False
    rounds: int = 2
    chart: Path | None = None


def _with_server(opts: RunOptions, body) -> dict[str, Any]:
    if opts.host:
        return body(opts.host.rstrip("/"), None)
    home_ctx = (
        tempfile.TemporaryDirectory(prefix="bonn-loadtest-home-") if opts.bentoml_home is None else None
    )
    home = Path(home_ctx.name) if home_ctx else opts.bentoml_home
    try:
        if opts.bonn:  # serve exactly these models, not also whatever models/ ships
            register_models(home, opts.bonn, opts.fp, opts.server_env)
        extra = ["--no-register"] if opts.bonn else None
        with start_server(
            home, opts.out_dir / "server.log", port=opts.port, env_extra=opts.server_env, extra_args=extra
        ) as srv:
            result = body(srv.url, srv)
            result["server"] = {"pid": srv.pid, "bentoml_home": str(home)}
        return result
    finally:
        if home_ctx:
            home_ctx.cleanup()


def execute(opts: RunOptions) -> tuple[dict[str, Any], list[str]]:
    """Run the configured test; returns (summary, broken gates). Writes summary.json into opts.out_dir."""
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    thr = load_thresholds(opts.thresholds or default_thresholds(), opts.profile)

    def body(url: str, srv: Server | None) -> dict[str, Any]:
        cfg = LocustConfig(**{**opts.locust.__dict__, "host": url})
        if opts.compare:
            return _compare(cfg, opts)
        sampler = None
        if opts.soak:
            if srv is None:
                raise ValueError("--soak samples the server's RSS, so it must start the server (no --host)")
            sampler = RssSampler(srv.pid, interval=2.0)
            sampler.start()
        try:
            summary = run_locust(cfg, opts.out_dir)
        finally:
            samples = sampler.stop() if sampler else None
        if samples is not None:
            warmup = (
                opts.soak_warmup_s
                if opts.soak_warmup_s is not None
                else float(thr.get("rss_warmup_s", max(30.0, cfg.duration_s * 0.1)))
            )
            summary["soak"] = rss_growth(samples, warmup)
            summary["soak"]["samples"] = samples
        return summary

    summary = _with_server(opts, body)
    if opts.compare:  # each route alone, no shared profile: the one gate is that nothing failed
        broken = summary.get("broken", [])
        summary["thresholds"] = {"profile": "compare (failures only)", "gates": {"failures": 0}, "broken": broken,
                                 "passed": not broken}
    else:
        broken = check_thresholds(summary, thr)
        summary["thresholds"] = {"profile": opts.profile, "gates": thr, "broken": broken, "passed": not broken}
    (opts.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary, broken


def _compare(cfg: LocustConfig, opts: RunOptions) -> dict[str, Any]:
    """The same load against the BONN route then the FP route, alternating for `rounds` rounds."""
    runs: dict[str, list[dict[str, Any]]] = {"bonn": [], "fp": []}
    fp_name = cfg.fp_model
    for i in range(opts.rounds):
        for route in ("bonn", "fp"):
            c = LocustConfig(**{**cfg.__dict__, "models": route, "fp_model": fp_name})
            s = run_locust(c, opts.out_dir, prefix=f"compare_{route}_r{i}")
            runs[route].append(s)
    rows, ratio = compare_table(runs)
    md = compare_markdown(rows, ratio)
    (opts.out_dir / "compare.md").write_text(md + "\n")
    chart = opts.chart or opts.out_dir / "loadtest_bonn_vs_fp.png"
    compare_chart(
        rows,
        ratio,
        chart,
        f"{cfg.users} users, think 0-{cfg.think_ms:g} ms, mix={cfg.mix}, {cfg.duration_s} s x {opts.rounds} "
        "rounds per route, server and Locust on the same 2 cores",
    )
    broken = [f"{r['route']}: {r['failures']} failures" for r in rows if r["failures"]]
    return {
        "compare": rows,
        "bonn_fp_rps_ratio": ratio,
        "markdown": md,
        "chart": str(chart),
        "runs": runs,
        "broken": broken,
        "failures": sum(r["failures"] for r in rows),
    }


def print_summary(summary: dict[str, Any], out=sys.stdout) -> None:
    if "compare" in summary:
        print(summary["markdown"], file=out)
    else:
        t = summary["total"]
        print(
            f"total: {t['requests']} requests, {t.get('rps')} req/s, failures {summary['failures']} "
            f"{summary['failures_by_kind']}, shed 503: {summary['shed_503']}, 429: {summary['shed_429']}",
            file=out,
        )
        for r, b in summary["routes"].items():
            print(
                f"  {r:5s} {b['requests']:6d} req {b['rps']} req/s  p50 {b['p50_ms']} p95 {b['p95_ms']} "
                f"p99 {b['p99_ms']} ms  shed {b.get('shed_503', 0)} + {b.get('shed_429', 0)} (429)",
                file=out,
            )
        if "soak" in summary:
            s = summary["soak"]
            if s.get("ok"):
                print(
                    f"  soak: RSS {s['baseline_bytes'] / 2**20:.1f} -> {s['end_bytes'] / 2**20:.1f} MiB "
                    f"({s['growth'] * 100:+.2f}%), max {s['max_bytes'] / 2**20:.1f} MiB",
                    file=out,
                )
            else:
                print(f"  soak: {s.get('reason')}", file=out)
    th = summary["thresholds"]
    print(
        f"thresholds [{th['profile']}]: "
        + ("PASS" if th["passed"] else "FAIL\n  " + "\n  ".join(th["broken"])),
        file=out,
    )
