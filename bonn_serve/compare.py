"""GET /compare: the served models side by side, from live metrics and the registry cards.

Latency percentiles are interpolated from the Prometheus histograms (all workers), throughput is images per
second of engine time (what one worker's engine sustains at the batch sizes actually served), memory is the
resident-set growth measured when each model was loaded.
"""

from __future__ import annotations

import html
from typing import Any

from . import metrics
from .classifier import Classifier


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 3)


def compare_report(clf: Classifier) -> dict[str, Any]:
    request_h = metrics.histogram_snapshot("bonn_request_seconds")
    infer_h = metrics.histogram_snapshot("bonn_inference_seconds")
    batch_h = metrics.histogram_snapshot("bonn_batch_size")
    images = metrics.counter_values("bonn_images_classified")
    rows = []
    for _, served in sorted(clf.models.items()):
        lm = served.model
        key = (lm.name, lm.backend)
        req, inf, bat = request_h.get(key), infer_h.get(key), batch_h.get(key)
        n_img = images.get(key, 0.0)
        infer_s = inf["sum"] if inf else 0.0
        rows.append(
            {
                "model": lm.name,
                "version": lm.entry.version,
                "backend": lm.backend,
                "kind": lm.entry.kind,
                "arch": lm.entry.labels.get("arch"),
                "accuracy": lm.entry.accuracy,
                "weight_bytes": lm.weight_bytes,
                "file_bytes": lm.entry.metadata.get("file_bytes"),
                "resident_bytes": lm.resident_bytes,
                "requests": int(req["count"]) if req else 0,
                "images": int(n_img),
                "latency_ms": {
                    "p50": _ms(metrics.quantile(req["buckets"], 0.5)) if req else None,
                    "p99": _ms(metrics.quantile(req["buckets"], 0.99)) if req else None,
                },
                "inference_ms": {
                    "p50": _ms(metrics.quantile(inf["buckets"], 0.5)) if inf else None,
                    "p99": _ms(metrics.quantile(inf["buckets"], 0.99)) if inf else None,
                },
                "mean_batch_images": round(bat["sum"] / bat["count"], 2) if bat and bat["count"] else None,
                "throughput_images_per_s": round(n_img / infer_s, 1) if infer_s > 0 else None,
            }
        )
    bonn = next((r for r in rows if r["kind"] == "bonn"), None)
    fp = next((r for r in rows if r["kind"] == "fp"), None)
    ratios: dict[str, Any] = {}
    if bonn and fp:
        ratios["weight_bytes_fp_over_bonn"] = _ratio(fp["weight_bytes"], bonn["weight_bytes"])
        ratios["throughput_bonn_over_fp"] = _ratio(
            bonn["throughput_images_per_s"], fp["throughput_images_per_s"]
        )
        ratios["p50_latency_fp_over_bonn"] = _ratio(fp["latency_ms"]["p50"], bonn["latency_ms"]["p50"])
        if bonn["accuracy"] is not None and fp["accuracy"] is not None:
            ratios["accuracy_gap_points"] = round(100 * (fp["accuracy"] - bonn["accuracy"]), 2)
    return {
        "models": rows,
        "ratios": ratios,
        "process_resident_bytes": metrics.update_process_rss(),
        "settings": {
            "workers": clf.settings.workers,
            "threads": clf.settings.threads,
            "max_batch": clf.settings.max_batch,
            "max_wait_ms": clf.settings.max_wait_ms,
        },
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


# --------------------------------------------------------------------------------------------- HTML
def _bars(title: str, rows: list[dict[str, Any]], value: Any, unit: str) -> str:
    """One small horizontal bar chart as inline SVG (no scripts, no external assets)."""
    vals = [(r["model"], value(r)) for r in rows]
    top = max((v for _, v in vals if v), default=0) or 1
    h = 28 * len(vals) + 30
    parts = [
        f'<svg width="560" height="{h}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (name, v) in enumerate(vals):
        y = 28 + 28 * i
        w = 0 if not v else max(2, int(300 * v / top))
        color = "#2b7bb9" if name.startswith("bonn") else "#d9822b"
        label = "n/a" if v is None else _with_unit(v, unit)
        parts.append(
            f'<text x="0" y="{y + 15}">{html.escape(name)}</text>'
            f'<rect x="170" y="{y + 2}" width="{w}" height="18" fill="{color}"/>'
            f'<text x="{176 + w}" y="{y + 15}">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _with_unit(v: float, unit: str) -> str:
    if unit == "B":
        for size, name in ((2**20, "MiB"), (2**10, "KiB")):
            if v >= size:
                return f"{v / size:,.1f} {name}"
        return f"{v:,.0f} B"
    if unit == "%":
        return f"{100 * v:.2f} %"
    return f"{v:,.4g} {unit}"


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_html(report: dict[str, Any]) -> str:
    rows = report["models"]
    cols = [
        ("model", "model"),
        ("backend", "backend"),
        ("accuracy", "accuracy"),
        ("weight_bytes", "weight bytes"),
        ("resident_bytes", "resident bytes"),
        ("requests", "requests"),
        ("images", "images"),
    ]
    head = (
        "".join(f"<th>{html.escape(c[1])}</th>" for c in cols)
        + "<th>p50 ms</th><th>p99 ms</th><th>img/s</th>"
    )
    body = ""
    for r in rows:
        values = [r[c[0]] for c in cols] + [
            r["latency_ms"]["p50"],
            r["latency_ms"]["p99"],
            r["throughput_images_per_s"],
        ]
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in values)
        body += f"<tr>{cells}</tr>"
    charts = "".join(
        [
            _bars("p50 /classify latency (lower is better)", rows, lambda r: r["latency_ms"]["p50"], "ms"),
            _bars("p99 /classify latency", rows, lambda r: r["latency_ms"]["p99"], "ms"),
            _bars(
                "throughput, images per engine-second", rows, lambda r: r["throughput_images_per_s"], "img/s"
            ),
            _bars("weight bytes", rows, lambda r: r["weight_bytes"], "B"),
            _bars("resident memory added by the model", rows, lambda r: r["resident_bytes"], "B"),
            _bars("accuracy (model card)", rows, lambda r: r["accuracy"], "%"),
        ]
    )
    ratios = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in report["ratios"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>bonn-serve: BONN vs FP</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:right;white-space:nowrap}}
td:first-child,td:nth-child(2){{text-align:left}}svg{{display:block;margin:1em 0;font-size:13px}}
</style></head><body>
<h1>BONN (1-bit, XNOR engine) vs full-precision baseline</h1>
<p>Live numbers from this server's metrics since start; send traffic to <code>/classify</code> with
<code>model=</code> each name to fill them. JSON: <code>/compare?format=json</code>.</p>
<table><tr>{head}</tr>{body}</table><ul>{ratios}</ul>{charts}
<p>process resident memory: {report["process_resident_bytes"]:,} bytes</p></body></html>"""
