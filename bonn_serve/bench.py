"""Whole-model benchmark: the XNOR engine vs onnxruntime FP32 and INT8 (static QDQ) on the same architectures,
plus per-layer binary throughput against this CPU's measured popcount peak, and model sizes.

Models are random (``training.models.randomize_``): latency does not depend on the weights. Building them needs
the ``train`` extra (torch, onnx); the runtime engine itself never imports torch. Backends are timed
interleaved (one call of each per round) so background load hits them alike; reported numbers are medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .engine import Engine

BACKENDS = ("engine", "ort_fp32", "ort_int8")


@dataclass
class BenchConfig:
    archs: list[str] = field(default_factory=lambda: ["resnet18", "wrn22-16"])
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    threads: list[int] = field(default_factory=lambda: [1, 2])
    runs: int = 20
    warmup: int = 3
    calib_inputs: int = 8
    peak_seconds: float = 0.5
    layer_repeats: int = 11
    out_dir: Path = Path("out/bench")
    seed: int = 0
    gap_s: float = 0.005  # idle time before each timed call (lets other backends' spinning threads settle)


# ------------------------------------------------------------------------------------------------- models
@dataclass
class ArchModels:
    arch: str
    size: int
    bonn: Path
    fp32: Path
    int8: Path


def build_models(arch: str, cfg: BenchConfig, log: Callable[[str], None]) -> ArchModels:
    """Random binary model -> .bonn; random full-precision model -> FP32 ONNX -> static INT8 QDQ ONNX."""
    try:
        import torch

        from training.export import export_bonn, export_onnx
        from training.models import ARCHS, build_model, randomize_
    except ImportError as e:
        raise SystemExit(f"bonn-serve bench builds its models with torch: install the train extra "
                         f"(pip install '.[train]'); missing {e.name!r}") from None
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    size = ARCHS[arch]["input"].size
    m = ArchModels(arch, size, cfg.out_dir / f"{arch}.bonn", cfg.out_dir / f"{arch}_fp32.onnx",
                   cfg.out_dir / f"{arch}_int8.onnx")
    torch.manual_seed(cfg.seed)
    log(f"[{arch}] exporting random binary model -> {m.bonn}")
    export_bonn(randomize_(build_model(arch, binary=True), cfg.seed).eval(), m.bonn, arch,
                provenance={"note": "random weights (benchmark)"})
    log(f"[{arch}] exporting random full-precision model -> {m.fp32}")
    export_onnx(randomize_(build_model(arch, binary=False), cfg.seed).eval(), m.fp32, arch=arch)
    log(f"[{arch}] quantizing (static QDQ, u8 activations, s8 per-channel weights) -> {m.int8}")
    quantize_int8(m.fp32, m.int8, size, cfg.calib_inputs, cfg.seed)
    return m


def quantize_int8(fp32: Path, int8: Path, size: int, n_inputs: int, seed: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class RandomReader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(seed)
            self.batches = iter([{"input": rng.standard_normal((1, 3, size, size), dtype=np.float32)}
                                 for _ in range(n_inputs)])

        def get_next(self):
            return next(self.batches, None)

    import logging

    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The quantizer logs a warning per BN weight (no axis 1 for per-channel); keep the output readable.
    logging.disable(logging.WARNING)
    try:
        src = int8.with_name(int8.stem + "_pre.onnx")
        try:  # ORT's recommended preparation (shape inference + graph optimization) before quantizing
            quant_pre_process(str(fp32), str(src))
        except Exception:  # noqa: BLE001 - optional step; quantize the plain export instead
            src = fp32
        quantize_static(str(src), str(int8), RandomReader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        if src != fp32:
            src.unlink()
    finally:
        logging.disable(logging.NOTSET)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------------ timing
def time_interleaved(fns: dict[str, Callable[[], Any]], runs: int, warmup: int,
                     gap_s: float = 0.005) -> dict[str, dict[str, float]]:
    """Median / min / max ms per function; each round calls every function once.

    A short idle gap follows every call: thread pools spin for a while after a job (ORT's intra-op threads
    for milliseconds), and without the gap the next backend would start on cores still busy spinning."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            time.sleep(gap_s)
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)} for k, v in samples.items()}


def bench_latency(m: ArchModels, cfg: BenchConfig, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(cfg.seed)
    for threads in cfg.threads:
        engine = Engine.load(m.bonn, threads=threads)
        fp32, int8 = ort_session(m.fp32, threads), ort_session(m.int8, threads)
        for batch in cfg.batches:
            x = rng.standard_normal((batch, 3, m.size, m.size), dtype=np.float32)
            res = time_interleaved({
                "engine": lambda: engine.predict(x),
                "ort_fp32": lambda: fp32.run(None, {"input": x}),
                "ort_int8": lambda: int8.run(None, {"input": x}),
            }, cfg.runs, cfg.warmup, cfg.gap_s)
            row = {"arch": m.arch, "threads": threads, "batch": batch, "input": [batch, 3, m.size, m.size], **{
                f"{k}_{stat}": v[stat] for k, v in res.items() for stat in ("median_ms", "min_ms", "max_ms")}}
            row["speedup_vs_fp32"] = row["ort_fp32_median_ms"] / row["engine_median_ms"]
            row["speedup_vs_int8"] = row["ort_int8_median_ms"] / row["engine_median_ms"]
            rows.append(row)
            log(f"[{m.arch}] threads={threads} batch={batch:>3}: engine {row['engine_median_ms']:8.2f} ms | "
                f"ORT FP32 {row['ort_fp32_median_ms']:8.2f} ms (x{row['speedup_vs_fp32']:.2f}) | "
                f"ORT INT8 {row['ort_int8_median_ms']:8.2f} ms (x{row['speedup_vs_int8']:.2f})")
    return rows


def bench_layers(m: ArchModels, cfg: BenchConfig, peak: float, path: str) -> list[dict[str, Any]]:
    """Per-op time inside the whole graph (1 thread, batch 1, min over runs) and, for binary layers, the same
    layer alone through the kernels' microbenchmark."""
    from . import _engine

    engine = Engine.load(m.bonn, threads=1)
    x = np.random.default_rng(cfg.seed).standard_normal((1, 3, m.size, m.size), dtype=np.float32)
    for _ in range(cfg.warmup):
        engine.predict(x)
    best = np.full(len(engine.packed.ops), np.inf)
    for _ in range(max(cfg.runs, 5)):
        best = np.minimum(best, engine.profile(x)[1])
    layers = []
    stats = engine.stats(1, m.size, m.size)
    value_shape = {engine.packed.header["graph"]["input"]: [1, 3, m.size, m.size]}
    for op, s in zip(engine.packed.ops, stats):
        value_shape[op["output"]] = list(s["shape"])
    for op, s, t in zip(engine.packed.ops, stats, best):
        row = {"name": op["name"], "op": op["op"], "ms": float(t) * 1e3, "out_shape": list(s["shape"]),
               "binary_macs": s["binary_macs"], "float_macs": s["float_macs"]}
        if op["op"] == "binary_conv2d":
            a = op["attrs"]
            _, _, in_h, in_w = value_shape[op["inputs"][0]]
            row["gbmacs_in_graph"] = s["binary_macs"] / t / 1e9
            row["pct_peak_in_graph"] = 100 * row["gbmacs_in_graph"] / peak
            row["fused_pack"] = bool(s["fused_pack"])
            iso = _engine.bench_bconv(a["in_channels"], a["out_channels"], in_h, in_w, a["kernel"], a["stride"],
                                      1, 1, path, cfg.layer_repeats)
            row["gbmacs_isolated"] = s["binary_macs"] / iso / 1e9
            row["pct_peak_isolated"] = 100 * row["gbmacs_isolated"] / peak
        elif s["float_macs"]:
            row["gmacs_float"] = s["float_macs"] / t / 1e9
        layers.append(row)
    return layers


# ------------------------------------------------------------------------------------------------ report
def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from . import _engine

    path = _engine.selected_path()
    log(f"measuring the single-thread popcount peak of path {path} ...")
    peak = _engine.popcount_peak_gbmacs(path, cfg.peak_seconds)
    log(f"popcount peak: {peak:.1f} G binary MACs/s (1 thread, L1-resident)")
    result: dict[str, Any] = {
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": _loadavg(), "popcount_path": path, "float_isa": _engine.selected_float_isa(),
                    "popcount_peak_gbmacs_1t": peak},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
        "latency": [], "layers": {}, "sizes": {}, "targets": {},
    }
    for arch in cfg.archs:
        m = build_models(arch, cfg, log)
        sizes = {"bonn_bytes": m.bonn.stat().st_size, "onnx_fp32_bytes": m.fp32.stat().st_size,
                 "onnx_int8_bytes": m.int8.stat().st_size}
        sizes["fp32_over_bonn"] = sizes["onnx_fp32_bytes"] / sizes["bonn_bytes"]
        sizes["int8_over_bonn"] = sizes["onnx_int8_bytes"] / sizes["bonn_bytes"]
        result["sizes"][arch] = sizes
        log(f"[{arch}] sizes: .bonn {sizes['bonn_bytes']:,} B, FP32 ONNX {sizes['onnx_fp32_bytes']:,} B "
            f"(x{sizes['fp32_over_bonn']:.1f}), INT8 ONNX {sizes['onnx_int8_bytes']:,} B (x{sizes['int8_over_bonn']:.1f})")
        result["latency"] += bench_latency(m, cfg, log)
        result["layers"][arch] = bench_layers(m, cfg, peak, path)
    result["machine"]["loadavg_end"] = _loadavg()
    result["targets"] = targets(result)
    return result


def targets(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    row = next((r for r in result["latency"] if r["arch"] == "resnet18" and r["batch"] == 1 and r["threads"] == 1),
               None)
    if row:
        out["resnet18_b1_t1_speedup_vs_fp32"] = row["speedup_vs_fp32"]
        out["resnet18_b1_t1_speedup_vs_fp32_ge_5x"] = row["speedup_vs_fp32"] >= 5
        out["resnet18_b1_t1_faster_than_int8"] = row["speedup_vs_int8"] > 1
    if "resnet18" in result["sizes"]:
        ratio = result["sizes"]["resnet18"]["fp32_over_bonn"]
        out["resnet18_size_ratio_fp32_over_bonn"] = ratio
        out["resnet18_size_ratio_ge_10x"] = ratio >= 10
    return out


def write_report(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = out_dir / "bench.json"
    jpath.write_text(json.dumps(result, indent=1))
    ppath = out_dir / "latency.png"
    plot(result, ppath)
    return jpath, ppath


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(result["layers"])
    fig, axes = plt.subplots(2, len(archs), figsize=(6.5 * len(archs), 9), squeeze=False)
    colors = {"engine": "tab:green", "ort_fp32": "tab:red", "ort_int8": "tab:blue"}
    labels = {"engine": "bonn engine", "ort_fp32": "ORT FP32", "ort_int8": "ORT INT8 (QDQ)"}
    for j, arch in enumerate(archs):
        ax = axes[0][j]
        rows = [r for r in result["latency"] if r["arch"] == arch]
        for threads, style in zip(sorted({r["threads"] for r in rows}), ("-", "--", ":", "-.")):
            rs = sorted((r for r in rows if r["threads"] == threads), key=lambda r: r["batch"])
            for b in BACKENDS:
                ax.plot([r["batch"] for r in rs], [r[f"{b}_median_ms"] for r in rs], style, marker="o",
                        color=colors[b], label=f"{labels[b]}, {threads} thread{'s' if threads > 1 else ''}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("latency per call, ms (median)")
        ax.set_title(f"{arch}: whole-model latency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1][j]
        layers = [l for l in result["layers"][arch] if l["op"] == "binary_conv2d"]
        idx = np.arange(len(layers))
        ax.bar(idx - 0.2, [l["pct_peak_in_graph"] for l in layers], 0.4, label="in the whole graph (fused)")
        ax.bar(idx + 0.2, [l["pct_peak_isolated"] for l in layers], 0.4, label="layer alone (microbenchmark)")
        ax.set_xticks(idx, [l["name"].replace("stages.", "") for l in layers], rotation=60, fontsize=7)
        ax.set_ylabel("% of 1-thread popcount peak")
        ax.set_title(f"{arch}: binary layers, batch 1, 1 thread "
                     f"(peak {result['machine']['popcount_peak_gbmacs_1t']:.0f} G bMAC/s)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(result: dict[str, Any]) -> str:
    lines = [f"{'arch':<10} {'thr':>3} {'batch':>5} {'engine ms':>10} {'FP32 ms':>10} {'INT8 ms':>10} "
             f"{'vs FP32':>8} {'vs INT8':>8}"]
    for r in result["latency"]:
        lines.append(f"{r['arch']:<10} {r['threads']:>3} {r['batch']:>5} {r['engine_median_ms']:>10.2f} "
                     f"{r['ort_fp32_median_ms']:>10.2f} {r['ort_int8_median_ms']:>10.2f} "
                     f"{r['speedup_vs_fp32']:>7.2f}x {r['speedup_vs_int8']:>7.2f}x")
    for arch, s in result["sizes"].items():
        lines.append(f"{arch}: .bonn {s['bonn_bytes']:,} B vs FP32 ONNX {s['onnx_fp32_bytes']:,} B "
                     f"(x{s['fp32_over_bonn']:.1f} smaller), INT8 ONNX {s['onnx_int8_bytes']:,} B "
                     f"(x{s['int8_over_bonn']:.1f})")
    for arch, layers in result["layers"].items():
        lines.append(f"{arch}: sum of per-op minimum times, batch 1, 1 thread: {sum(l['ms'] for l in layers):.2f} ms "
                     f"(binary convs {sum(l['ms'] for l in layers if l['op'] == 'binary_conv2d'):.2f} ms, "
                     f"float convs {sum(l['ms'] for l in layers if l['op'] == 'conv2d'):.2f} ms)")
        bl = [l for l in layers if l["op"] == "binary_conv2d"]
        if bl:
            lines.append(f"{arch}: binary layers at batch 1, 1 thread: "
                         f"{min(l['pct_peak_in_graph'] for l in bl):.0f}-{max(l['pct_peak_in_graph'] for l in bl):.0f}% "
                         f"of peak in the graph, {min(l['pct_peak_isolated'] for l in bl):.0f}-"
                         f"{max(l['pct_peak_isolated'] for l in bl):.0f}% alone")
    load = result["machine"].get("loadavg_start")
    if load and load[0] > (result["machine"].get("cores") or 1):
        lines.append(f"NOTE: the machine was busy (load average {load[0]:.1f} at the start, "
                     f"{(result['machine'].get('loadavg_end') or [0])[0]:.1f} at the end, on "
                     f"{result['machine'].get('cores')} cores): absolute times are inflated; ratios were measured "
                     f"interleaved, per-op times are minima")
    for k, v in result["targets"].items():
        lines.append(f"target {k}: {v if not isinstance(v, float) else round(v, 2)}")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None
