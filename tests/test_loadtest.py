"""The load-test runner: its pure parts (percentiles, summaries, gates, RSS growth) and one short real run.

The real run (`test_short_loadtest_passes_ci_gates`) starts `bonn-serve serve` on loopback with a random
BONN + FP baseline, drives it for 20 s with Locust in a subprocess (never imported here) and gates on the
`ci` profile of loadtests/thresholds.yaml: zero failures, both routes answered. No wall-clock gates.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bonn_serve import loadtest as lt

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- pure parts
def test_percentile_matches_histogram() -> None:
    times = {"10": 50, "20": 45, "100": 4, "900": 1}
    assert lt.percentile(times, 0.50) == 10
    assert lt.percentile(times, 0.95) == 20
    assert lt.percentile(times, 0.99) == 100
    assert lt.percentile(times, 1.0) == 900
    assert lt.percentile({}, 0.5) is None


def _entry(name: str, n: int, fails: int = 0, times: dict | None = None) -> dict:
    return {
        "name": name,
        "method": "POST",
        "num_requests": n,
        "num_failures": fails,
        "start_time": 1000.0,
        "last_request_timestamp": 1010.0,
        "total_response_time": 10.0 * n,
        "response_times": times or {"10": n},
    }


def test_summarize_separates_routes_shed_and_failures() -> None:
    stats = [
        _entry("bonn small-jpeg", 80),
        _entry("bonn multi-4-jpeg", 20, times={"40": 20}),
        _entry("fp small-jpeg", 50, fails=2),
        _entry("bonn small-jpeg (503 shed)", 10),
        _entry("fp small-jpeg (429 shed)", 3),
        _entry("/models", 2),
    ]
    outcomes = {
        "bonn small-jpeg": {"ok": 80, "shed_503": 10},
        "fp small-jpeg": {"ok": 48, "http_5xx": 2},
        "task": {"task_error": 1},
    }
    s = lt.summarize(stats, outcomes)
    assert s["routes"]["bonn"]["requests"] == 100 and s["routes"]["bonn"]["shed_503"] == 10
    assert s["routes"]["bonn"]["rps"] == 10.0
    assert s["routes"]["bonn"]["p50_ms"] == 10 and s["routes"]["bonn"]["p99_ms"] == 40
    assert s["routes"]["fp"]["requests"] == 50
    assert s["shed_503"] == 10 and s["shed_429"] == 3 and s["shed_ratio"] == round(13 / 165, 4)
    assert s["routes"]["fp"]["shed_429"] == 3 and s["routes"]["bonn"]["shed_429"] == 0
    assert s["failures_by_kind"] == {"http_5xx": 2, "task_error": 1} and s["failures"] == 3


def test_thresholds_file_has_profiles_and_gates_bite() -> None:
    ci = lt.load_thresholds(lt.default_thresholds(), "ci")
    assert ci["max_failures"] == 0 and set(ci["routes"]) == {"bonn", "fp"}
    assert not any(k.startswith("max_p") or k == "min_rps" for k in ci), "no wall-clock gates in CI"
    for profile in ("default", "soak"):
        lt.load_thresholds(lt.default_thresholds(), profile)
    with pytest.raises(KeyError):
        lt.load_thresholds(lt.default_thresholds(), "nope")

    good = lt.summarize(
        [_entry("bonn small-jpeg", 100), _entry("fp small-jpeg", 100)],
        {"bonn small-jpeg": {"ok": 100}, "fp small-jpeg": {"ok": 100}},
    )
    assert lt.check_thresholds(good, ci) == []
    bad = lt.summarize([_entry("bonn small-jpeg", 100)], {"bonn small-jpeg": {"ok": 99, "timeout": 1}})
    broken = lt.check_thresholds(bad, ci)
    assert any("failed requests" in b for b in broken) and any("'fp'" in b for b in broken)
    slow = dict(good, routes={r: dict(b, p99_ms=9999.0) for r, b in good["routes"].items()})
    assert any("p99" in b for b in lt.check_thresholds(slow, {"max_p99_ms": 100}))


def test_rss_growth_verdict() -> None:
    flat = [(t, 100_000_000 + (t % 7) * 10_000) for t in range(0, 600, 2)]
    g = lt.rss_growth(flat, warmup_s=60)
    assert g["ok"] and abs(g["growth"]) < 0.01
    leak = [(t, 100_000_000 + t * 50_000) for t in range(0, 600, 2)]  # +50 kB/s
    g = lt.rss_growth(leak, warmup_s=60)
    assert g["growth"] > 0.05
    assert lt.check_thresholds(
        {"failures": 0, "shed_ratio": 0, "routes": {}, "total": {}, "soak": g}, {"max_rss_growth": 0.05}
    )
    assert not lt.rss_growth(flat[:3], warmup_s=0)["ok"]


_TREE_RSS_PROBE = """
import os, subprocess, sys
import psutil
from bonn_serve import loadtest as lt
# The child says when its 50 MB are touched: read while it still grew, the sum would race its page faults.
child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50 << 20); print('ready', flush=True); "
                          "time.sleep(30)"], stdout=subprocess.PIPE, text=True)
try:
    assert child.stdout.readline().strip() == "ready"
    me, kid = psutil.Process(), psutil.Process(child.pid)
    total, leaves = lt.tree_rss(os.getpid()), lt.tree_rss(os.getpid(), leaves_only=True)
    own, kid_rss = me.memory_info().rss, kid.memory_info().rss
    # total: this process and its child; leaves: the child alone (this process has a child, so it is no leaf)
    assert abs(total - (own + kid_rss)) < 4 << 20, (total, own, kid_rss)
    assert abs(leaves - kid_rss) < 4 << 20 and leaves > 40 << 20, (leaves, kid_rss)
finally:
    child.kill()
    child.wait()
"""


def test_tree_rss_counts_children() -> None:
    """In a fresh process with exactly one child, so that no other descendant of the test runner (compile
    workers, servers of other tests) can start or grow between the readings."""
    done = subprocess.run([sys.executable, "-c", _TREE_RSS_PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_compare_table_and_chart(tmp_path: Path) -> None:
    def run(route: str, rps: float, p: float) -> dict:
        s = lt.summarize(
            [dict(_entry(f"{route} small-jpeg", int(rps * 10), times={str(int(p)): 10}))],
            {f"{route} small-jpeg": {"ok": int(rps * 10)}},
        )
        return s

    runs = {"bonn": [run("bonn", 30, 20), run("bonn", 32, 20)], "fp": [run("fp", 20, 30), run("fp", 16, 30)]}
    rows, ratio = lt.compare_table(runs)
    assert [r["route"] for r in rows] == ["bonn", "fp"]
    assert ratio == pytest.approx((30 / 20 + 32 / 16) / 2)
    md = lt.compare_markdown(rows, ratio)
    assert "| bonn |" in md and "1.75x" in md
    png = tmp_path / "c.png"
    lt.compare_chart(rows, ratio, png, "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_locustfile_model_discovery() -> None:
    """The locustfile finds the FP baseline in GET /models (loaded without importing locust)."""
    src = (REPO / "loadtests" / "locustfile.py").read_text()
    start = src.index("def discover_fp_model")
    ns: dict = {}
    exec(compile(src[start : src.index("\nclass ClassifyUser")], "locustfile", "exec"), ns)  # noqa: S102
    find = ns["discover_fp_model"]
    models = {
        "default": "bonn-a",
        "models": [
            {"name": "bonn-a", "kind": "bonn", "backend": "bonn-xnor"},
            {"name": "fp-a", "kind": "fp", "backend": "onnxruntime-fp32"},
        ],
    }
    assert find(models) == "fp-a"
    assert find({"models": [{"name": "bonn-a", "kind": "bonn", "backend": "bonn-xnor"}]}) is None


def test_locustfile_counts_only_the_services_own_503_as_shed() -> None:
    """A 503 is shedding only when the service says `overloaded`; any other 503 is a failure."""
    src = (REPO / "loadtests" / "locustfile.py").read_text()
    ns: dict = {}
    exec(compile(src[src.index("def judge") : src.index("\nclass ClassifyUser")], "locustfile", "exec"), ns)  # noqa: S102

    class Resp:
        def __init__(self, status: int, body: object) -> None:
            self.status_code, self._body = status, body

        def json(self):
            if isinstance(self._body, Exception):
                raise self._body
            return self._body

    judge = ns["judge"]
    assert judge(Resp(503, {"error": "overloaded", "detail": "x"}), 1) == "shed_503"
    assert judge(Resp(503, {"error": "unavailable"}), 1) == "http_5xx"
    assert judge(Resp(503, ValueError("not json")), 1) == "http_5xx"
    assert judge(Resp(200, {"predictions": [[1], [2]]}), 2) == "ok"


def test_locust_failures_missing_from_the_outcome_file_still_fail() -> None:
    """The outcome file explains failures; Locust's own count is the floor (a custom locustfile writes none)."""
    s = lt.summarize([_entry("bonn small-jpeg", 100, fails=40)], {})
    assert s["failures"] == 40 and s["failures_by_kind"] == {"unclassified": 40}
    s = lt.summarize([_entry("bonn small-jpeg", 100, fails=40)], {"bonn small-jpeg": {"ok": 60, "timeout": 40}})
    assert s["failures"] == 40 and s["failures_by_kind"] == {"timeout": 40}


def test_compare_report_survives_a_route_that_answered_nothing(tmp_path: Path) -> None:
    shed_only = lt.summarize([_entry("fp small-jpeg (503 shed)", 50)], {"fp small-jpeg": {"shed_503": 50}})
    ok = lt.summarize([_entry("bonn small-jpeg", 100)], {"bonn small-jpeg": {"ok": 100}})
    rows, ratio = lt.compare_table({"bonn": [ok], "fp": [shed_only]})
    assert ratio is None
    md = lt.compare_markdown(rows, ratio)
    assert "| fp | 1 | 0 | – |" in md
    lt.compare_chart(rows, ratio, tmp_path / "c.png", "test")


def test_compare_refuses_options_it_would_ignore(capsys) -> None:
    from bonn_serve.cli import main

    for extra in (["--soak"], ["--profile", "ci"], ["--models", "bonn"], ["--rounds", "0"]):
        assert main(["loadtest", "--compare", *extra]) == 2
        err = capsys.readouterr().err
        assert "--compare" in err or "--rounds" in err
    assert main(["loadtest", "--think-ms", "-1"]) == 2 and "--think-ms" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- real run
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="exporting a random test model needs torch (train extra)",
)
needs_locust = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="needs the load extra")


def run_loadtest_cli(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`bonn-serve loadtest --profile ci` on freshly exported random models; returns (process, report dir)."""
    bonn, fp = lt.export_random_models(tmp_path / "models")
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "bonn_serve", "loadtest", "--bonn", str(bonn), "--fp", str(fp)]
    cmd += ["--bentoml-home", str(tmp_path / "home"), "--profile", "ci", *extra, "--out", str(out)]
    r = subprocess.run(
        cmd,
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=lt.server_env(tmp_path / "home"),
    )
    return r, out


@needs_torch
@needs_locust
def test_short_loadtest_passes_ci_gates(tmp_path: Path) -> None:
    r, out = run_loadtest_cli(tmp_path, "--users", "4", "--spawn-rate", "4", "--duration", "20")
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{(out / 'server.log').read_text()[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["thresholds"]["passed"] and summary["failures"] == 0
    for route in ("bonn", "fp"):
        names = [n for n in summary["names"] if n.startswith(route + " ")]
        assert {
            f"{route} {k}"
            for k in ("small-jpeg", "small-png", "raw-png", "large-jpeg-640x480", "multi-4-jpeg")
        } <= set(names), names
        assert summary["routes"][route]["p99_ms"] is not None
    for suffix in ("_stats.csv", "_failures.csv", ".html", ".json"):
        assert (out / f"locust{suffix}").is_file(), suffix
    assert "thresholds [ci]: PASS" in r.stdout


@needs_torch
@needs_locust
@pytest.mark.slow
def test_forced_shedding_is_counted_as_shed_not_failure(tmp_path: Path) -> None:
    """BONN_MAX_QUEUE=4 (and at most 4 images per request, which the settings require) with batches held to fill:
    a 4-image request fits only an empty queue, so under 4 users many are refused. Each refusal must come back
    as a 503 that the runner counts as shed, not as a failure, while the other requests keep passing."""
    r, out = run_loadtest_cli(
        tmp_path, "--users", "4", "--duration", "15", "--server-env", "BONN_MAX_QUEUE=4",
        "--server-env", "BONN_MAX_IMAGES=4", "--server-env", "BONN_MAX_WAIT_MS=50",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == 0, summary["failures_by_kind"]
    multi = [n for n in summary["outcomes"] if "multi-4" in n]
    assert multi and all(set(summary["outcomes"][n]) <= {"ok", "shed_503"} for n in multi), summary["outcomes"]
    assert sum(summary["outcomes"][n].get("shed_503", 0) for n in multi) > 0, summary["outcomes"]
    # Locust's shed count and ours must agree.
    assert summary["shed_503"] == sum(c.get("shed_503", 0) for c in summary["outcomes"].values()) > 0
    assert r.returncode == 0, r.stdout
