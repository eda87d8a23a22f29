"""Loaded models behind one interface: the BONN in the XNOR engine, the FP baseline in onnxruntime.

Both take the model's preprocessed float32 NCHW batch and return logits [N, classes]; classes and the input
preprocessing come from the registry metadata (the .bonn header, or the card / paired BONN for ONNX).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .metrics import process_rss


@dataclass
class LoadedModel:
    entry: registry.ModelEntry
    predict: Callable[[np.ndarray], np.ndarray]
    classes: list[str]
    input_spec: dict[str, Any]
    weight_bytes: int
    resident_bytes: int  # RSS growth when this model was loaded (this process)
    load_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def backend(self) -> str:
        return self.entry.backend


def load_bonn(path: Path, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    from .engine import Engine

    engine = Engine.load(str(path), threads=threads)
    info = dict(getattr(engine, "info", {}) or {})
    return engine.predict, {"engine": engine, "info": info}


def load_onnx(path: Path, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return sess.run([out_name], {in_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return predict, {"session": sess}


def load_model(entry: registry.ModelEntry, threads: int) -> LoadedModel:
    """Verify the stored file against its registered sha256, then load it into its backend."""
    import time

    path = registry.verified_path(entry)
    # The runtime library first (importing onnxruntime is ~20 MiB): the resident memory measured below is what the
    # model adds, which /compare shows as such, not the cost of importing its backend.
    if entry.kind == "fp":
        import onnxruntime  # noqa: F401
    else:
        from . import engine  # noqa: F401
    rss0, t0 = process_rss(), time.perf_counter()
    if entry.kind == "bonn":
        predict, extra = load_bonn(path, threads)
    elif entry.kind == "fp":
        predict, extra = load_onnx(path, threads)
    else:
        raise registry.RegistryError(f"{entry.tag}: unknown model kind {entry.kind!r}")
    md = entry.metadata
    classes, spec = list(md.get("classes") or []), dict(md.get("input") or {})
    if not classes or not spec:
        raise registry.RegistryError(f"{entry.tag}: registry metadata lacks classes or input spec")
    # One warm-up call: allocates the engine's buffers now, so the first request is not slower and the
    # resident memory below includes them.
    h, w, c = int(spec.get("height", 32)), int(spec.get("width", 32)), int(spec.get("channels", 3))
    logits = predict(np.zeros((1, c, h, w), np.float32))
    if logits.shape != (1, len(classes)):
        raise registry.RegistryError(
            f"{entry.tag}: model outputs {logits.shape[1:]} logits for {len(classes)} classes"
        )
    return LoadedModel(
        entry,
        predict,
        classes,
        spec,
        int(md.get("weight_bytes") or 0),
        max(0, process_rss() - rss0),
        time.perf_counter() - t0,
        extra,
    )
