"""The runtime API: load a `.bonn` model into the C++ XNOR engine and run it.

    engine = Engine.load("model.bonn")            # threads=None: all cores
    logits = engine.predict(x)                      # float32 NCHW, any batch -> (N, classes)
    top5 = engine.classify([pil_image, array])      # raw images -> [(label, probability), ...] per image

Never imports torch. `predict` releases the GIL while the engine runs, so server threads stay responsive.
"""

from __future__ import annotations

import collections
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .format import PackedModel, read_bonn
from .preprocess import ImageLike, preprocess


def _native():
    try:
        from . import _engine
    except ImportError as e:  # pragma: no cover - depends on the build
        raise ImportError("bonn_serve._engine (the compiled engine) is missing; install the package with "
                          "`pip install .` so the C++ extension is built") from e
    return _engine


# Per-image limits a model file must fit (checked at load). Real nets sit far below: ResNet-18 at 224x224 has
# ~25 MiB of op outputs and 1.8e9 multiply-adds; WRN-22 at 32x32 ~1 MiB and 3e7.
MAX_ACTIVATION_BYTES = 256 << 20
MAX_WORK_PER_IMAGE = int(1e11)


class Engine:
    """A packed BONN model ready to run. Thread-safe: calls on one Engine are serialized by the engine."""

    def __init__(self, packed: PackedModel, threads: int | None = None, popcount: str | None = None,
                 float_isa: str | None = None, source: str | None = None, file_bytes: int | None = None):
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                    or not 0 <= threads <= 256):
            raise ValueError(f"threads must be an integer in 0..256 (0 or None: all cores), got {threads!r}")
        self.packed = packed
        self.source = source
        self.file_bytes = file_bytes
        graph = packed.header["graph"]
        self._model = _native().Model(packed.ops, packed.tensors, graph["input"], graph["output"],
                                      packed.input_spec["channels"], threads or 0, popcount, float_isa)
        if self._model.num_outputs != len(packed.classes):
            raise ValueError(f"model has {self._model.num_outputs} outputs but {len(packed.classes)} classes")
        self._check_budget()

    def _check_budget(self) -> None:
        """Refuse, at load, a model that cannot run at its own input size or would take more memory or time
        per image than any real net: a checksum-valid file can still declare a graph that grows its maps op by
        op (a chain of padded max-pools needs no weights) until a request exhausts the server."""
        stats = self.stats()  # at the declared input: raises if the graph cannot run at it
        side = self.input_spec["crop"]
        per_image = [math.prod(s["shape"][1:]) for s in stats]  # output elements of each op, in graph order
        act = 4 * (self.input_spec["channels"] * side * side + sum(per_image))
        work = sum(s["float_macs"] + s["binary_macs"] for s in stats) + sum(
            n * op["attrs"]["kernel"] ** 2 for n, op in zip(per_image, self.packed.ops) if op["op"] == "maxpool2d")
        if act > MAX_ACTIVATION_BYTES:
            raise ValueError(f"model needs {act / 2**20:.0f} MiB of activations per image at its "
                             f"{side}x{side} input; the engine allows {MAX_ACTIVATION_BYTES >> 20} MiB")
        if work > MAX_WORK_PER_IMAGE:
            raise ValueError(f"model needs {work:.3g} multiply-adds per image; the engine allows "
                             f"{MAX_WORK_PER_IMAGE:.0e}")

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None, popcount: str | None = None,
             float_isa: str | None = None) -> "Engine":
        """Read and validate a .bonn file and build the engine. `popcount` / `float_isa` force a kernel
        path ("portable", "avx2", "avx512", "neon" / "scalar", "avx2", "avx512"); default: the best one."""
        packed = read_bonn(path)
        return cls(packed, threads, popcount, float_isa, source=str(path), file_bytes=Path(path).stat().st_size)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def classes(self) -> list[str]:
        return self.packed.classes

    @property
    def input_spec(self) -> dict[str, Any]:
        return self.packed.input_spec

    @property
    def arch(self) -> str:
        return str(self.packed.header.get("model", {}).get("arch", "?"))

    @property
    def threads(self) -> int:
        return self._model.threads

    @property
    def popcount_path(self) -> str:
        return self._model.popcount_path

    # ------------------------------------------------------------------------------------------- inference
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float32 [N, C, H, W] -> float32 logits [N, classes]. Any N, H, W the model allows."""
        return self._model.predict(self._checked(x))

    def profile(self, x: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Like predict, plus the wall time of every op (seconds), in graph order."""
        return self._model.profile(self._checked(x))

    def _checked(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise ValueError(f"input must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise ValueError(f"input must be float32, got {x.dtype} (use x.astype(np.float32))")
        if x.ndim != 4:
            raise ValueError(f"input must be 4-D [N, C, H, W], got shape {x.shape}")
        c = self.input_spec["channels"]
        if x.shape[1] != c:
            raise ValueError(f"input has {x.shape[1]} channels, the model expects {c} (shape [N, {c}, H, W])")
        if min(x.shape) < 1:
            raise ValueError(f"input shape {x.shape} has an empty dimension")
        if not np.isfinite(x).all():  # NaN has no sign to binarize; preprocessed images never hold one
            raise ValueError("input contains NaN or infinity")
        return np.ascontiguousarray(x)

    def preprocess(self, images: ImageLike | Iterable[ImageLike]) -> np.ndarray:
        """Raw images -> the network input, following the model's own `input` spec."""
        return preprocess(images, self.input_spec)

    def classify(self, images: ImageLike | Iterable[ImageLike], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Raw images (PIL, encoded bytes, uint8 HxW / HxWx3 / HxWx4 arrays) -> per image the `top_k`
        (label, probability) pairs, most probable first."""
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        logits = self.predict(self.preprocess(images))
        probs = softmax(logits)
        k = min(top_k, probs.shape[1])
        out = []
        for row in probs:
            idx = np.argsort(-row, kind="stable")[:k]
            out.append([(self.classes[i], float(row[i])) for i in idx])
        return out

    # ------------------------------------------------------------------------------------------------ info
    def stats(self, batch: int = 1, height: int | None = None, width: int | None = None) -> list[dict[str, Any]]:
        """Per-op output shapes and MAC counts for an input of batch x C x height x width."""
        return self._model.stats(batch, height or self.input_spec["height"], width or self.input_spec["width"])

    @property
    def info(self) -> dict[str, Any]:
        header = self.packed.header
        stats = self.stats()
        kinds = collections.Counter(op["op"] for op in self.packed.ops)
        spec = self.input_spec
        return {
            "name": header.get("model", {}).get("name"),
            "arch": self.arch,
            "task": header.get("model", {}).get("task"),
            "source": self.source,
            "sha256": self.packed.checksum,
            "format_version": header.get("version"),
            "file_bytes": self.file_bytes,
            "weight_bytes": self.packed.weight_bytes,
            "classes": len(self.classes),
            "class_names_preview": self.classes[:5],
            "input": {k: spec.get(k) for k in ("layout", "channels", "height", "width", "color", "resize", "crop",
                                               "scale", "mean", "std")},
            "ops": len(self.packed.ops),
            "op_kinds": dict(kinds),
            "binary_macs": int(sum(s["binary_macs"] for s in stats)),
            "float_macs": int(sum(s["float_macs"] for s in stats)),
            "fused_packs": int(sum(bool(s["fused_pack"]) for s in stats)),
            "popcount_path": self.popcount_path,
            "float_isa": self._model.float_isa,
            "threads": self.threads,
            "provenance": header.get("model", {}).get("provenance", {}),
        }

    def __repr__(self) -> str:
        return (f"Engine({self.arch!r}, classes={len(self.classes)}, threads={self.threads}, "
                f"popcount={self.popcount_path!r})")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def supported_paths() -> list[str]:
    """Popcount paths this CPU supports (for forcing one with Engine.load(..., popcount=...))."""
    return list(_native().supported_paths())


__all__ = ["Engine", "softmax", "supported_paths"]
