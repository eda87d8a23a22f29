"""The classification pipeline behind /classify, independent of the web framework.

bytes -> `images.decode_image` -> `preprocess` (the model's own input spec) -> `MicroBatcher` -> backend
-> softmax top-k. Holds the loaded models of one worker process and records the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import metrics, registry
from .backends import LoadedModel, load_model
from .batcher import MicroBatcher
from .images import DecodeLimits, ImageError, decode_image, header_pixels
from .settings import Settings

logger = logging.getLogger("bonn_serve")
# Small uploads decode on the event loop, others on a thread. Bytes alone do not bound the work: a 3 KB
# one-bit PNG can declare 24 MP, so the header's pixel count decides too.
INLINE_DECODE_BYTES = 64 << 10
INLINE_DECODE_PIXELS = 1 << 20


class RequestError(ValueError):
    """A client error: `code` for machines, `detail` for people, `status` the HTTP status."""

    def __init__(self, code: str, detail: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.code, self.detail, self.status, self.headers = code, detail, status, headers or {}


@dataclass
class ServedModel:
    model: LoadedModel
    batcher: MicroBatcher
    limits: DecodeLimits


def preprocess_images(images: list[Any], spec: dict[str, Any]) -> np.ndarray:
    """RGB PIL images -> float32 [N, C, H, W] with the model's preprocessing (bonn_serve.preprocess)."""
    from .preprocess import preprocess

    return preprocess(images, spec)


def softmax_top_k(logits: np.ndarray, classes: list[str], k: int) -> list[list[dict[str, Any]]]:
    # same float32 arithmetic as Engine.classify, so both rank classes identically
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    # stable sort on -prob: ties keep class order, so the top-1 equals argmax of the logits
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [{"label": classes[j], "score": round(float(p[j]), 6)} for j in row]
        for p, row in zip(probs, order, strict=True)
    ]


class Classifier:
    """All models served by this worker, each with its own micro-batcher."""

    def __init__(self, settings: Settings, loaded_models: list[LoadedModel]) -> None:
        if not loaded_models:
            raise registry.RegistryError("no models to serve")
        self.settings = settings
        self.models: dict[str, ServedModel] = {}
        for loaded in loaded_models:
            entry = loaded.entry
            self.models[entry.name] = ServedModel(
                loaded,
                MicroBatcher(
                    loaded.predict,
                    max_batch=settings.max_batch,
                    max_wait_ms=settings.max_wait_ms,
                    max_queue=settings.max_queue,
                    inline_ms=settings.inline_ms,
                    on_batch=self._batch_recorder(loaded),
                    name=entry.name,
                ),
                DecodeLimits(settings.max_pixels, draft_to=int(loaded.input_spec.get("resize", 0)) or None),
            )
            metrics.WEIGHT_BYTES.labels(entry.name, entry.backend).set(loaded.weight_bytes)
            metrics.MODEL_RSS_BYTES.labels(entry.name, entry.backend).set(loaded.resident_bytes)
            logger.info(
                "loaded %s (%s): %d weight bytes, +%.1f MiB RSS, %.2f s",
                entry.tag,
                entry.backend,
                loaded.weight_bytes,
                loaded.resident_bytes / 2**20,
                loaded.load_seconds,
            )
        self.default_model = self._pick_default(settings.default_model)
        self._rss_updated = float("-inf")  # never: the first call refreshes
        self.refresh_process_gauges()

    def refresh_process_gauges(self) -> None:
        """This worker's RSS, and no gauges of workers that died, at most once a second. Called on every
        request, failed ones and /models, /compare included, so an idle or erroring worker does not go stale."""
        if time.monotonic() - self._rss_updated < 1.0:
            return
        self._rss_updated = time.monotonic()
        metrics.update_process_rss()
        try:
            dropped = metrics.forget_dead_processes()
        except Exception:  # a metrics directory we cannot read must not fail requests
            logger.exception("cannot drop the metrics of dead workers")
            return
        if dropped:
            logger.info("dropped the live gauges of dead worker processes %s", dropped)

    @classmethod
    def from_registry(cls, settings: Settings, entries: list[registry.ModelEntry]) -> Classifier:
        """Load (sha256-verified) every entry into its backend."""
        return cls(settings, [load_model(entry, settings.threads) for entry in entries])

    def _pick_default(self, wanted: str) -> str:
        if wanted:
            name, _ = registry.parse_tag(wanted)
            if name not in self.models:
                raise registry.RegistryError(
                    f"BONN_DEFAULT_MODEL={wanted!r} is not among the served models {sorted(self.models)}"
                )
            return name
        bonn = sorted(n for n, m in self.models.items() if m.model.entry.kind == "bonn")
        return bonn[0] if bonn else sorted(self.models)[0]

    @staticmethod
    def _batch_recorder(loaded: LoadedModel):
        labels = (loaded.name, loaded.backend)

        def record(n: int, seconds: float) -> None:
            metrics.BATCH_IMAGES.labels(*labels).observe(n)
            metrics.INFERENCE_SECONDS.labels(*labels).observe(seconds)
            metrics.IMAGES.labels(*labels).inc(n)

        return record

    def resolve(self, model: str | None) -> ServedModel:
        if not model:
            return self.models[self.default_model]
        try:
            name, version = registry.parse_tag(model)
        except registry.RegistryError as e:
            raise RequestError("unknown_model", str(e), 404) from None
        served = self.models.get(name)
        if served is None or (version and version != served.model.entry.version):
            raise RequestError(
                "unknown_model", f"model {model!r} is not served here; available: {sorted(self.models)}", 404
            )
        return served

    def parse_top_k(self, raw: str | int | None, served: ServedModel) -> int:
        n = len(served.model.classes)
        if raw is None or raw == "":
            return min(5, n)
        try:
            k = int(str(raw).strip())
        except ValueError:
            raise RequestError("bad_top_k", f"top_k must be an integer, got {str(raw)[:40]!r}") from None
        if not 1 <= k <= n:
            raise RequestError("bad_top_k", f"top_k must be between 1 and {n}, got {k}")
        return k

    def _decode_all(self, blobs: list[bytes], served: ServedModel) -> np.ndarray:
        """Decode and preprocess one image at a time: only one full-size decoded image is alive at once, not
        all of a request's (32 images of 24 MP would be 3 GB)."""
        spec = served.model.input_spec
        side = int(spec["crop"])
        out = np.empty((len(blobs), int(spec["channels"]), side, side), dtype=np.float32)
        for i, blob in enumerate(blobs):
            try:
                out[i] = preprocess_images([decode_image(blob, served.limits)], spec)[0]
            except ImageError as e:
                raise RequestError(e.code, f"image {i}: {e.detail}", e.status) from None
            except MemoryError:  # a backstop: preprocessing is bounded, but the image is what asked for it
                raise RequestError("image_too_large", f"image {i}: not enough memory to preprocess it", 413) from None
            except ValueError as e:
                raise RequestError("corrupt_image", f"image {i}: cannot preprocess it: {e}") from None
        return out

    async def classify(
        self,
        blobs: list[bytes],
        model: str | None = None,
        top_k: str | int | None = None,
        started: float | None = None,
    ) -> dict[str, Any]:
        """Classify encoded images. Raises RequestError (client errors) or Overloaded (queue full)."""
        t0 = started if started is not None else time.perf_counter()
        served = self.resolve(model)
        k = self.parse_top_k(top_k, served)
        if not blobs:
            raise RequestError("no_image", "the request contains no image")
        if len(blobs) > self.settings.max_images:
            raise RequestError(
                "too_many_images",
                f"{len(blobs)} images in one request; the limit is {self.settings.max_images}",
                413,
            )
        t_dec = time.perf_counter()
        if sum(len(b) for b in blobs) <= INLINE_DECODE_BYTES and sum(map(header_pixels, blobs)) <= INLINE_DECODE_PIXELS:
            x = self._decode_all(blobs, served)
        else:
            x = await asyncio.to_thread(self._decode_all, blobs, served)
        decode_s = time.perf_counter() - t_dec
        queue_gauge = metrics.QUEUE_IMAGES.labels(served.model.name)
        queue_gauge.set(served.batcher.queued_images + len(blobs))
        try:
            result = await served.batcher.submit(x)
        finally:
            queue_gauge.set(served.batcher.queued_images)
        predictions = softmax_top_k(result.logits, served.model.classes, k)
        total_s = time.perf_counter() - t0
        lm = served.model
        metrics.DECODE_SECONDS.labels(lm.name, lm.backend).observe(decode_s)
        metrics.REQUEST_SECONDS.labels(lm.name, lm.backend).observe(total_s)
        return {
            "model": lm.name,
            "version": lm.entry.version,
            "backend": lm.backend,
            "predictions": predictions,
            "timings_ms": {
                "decode": round(decode_s * 1e3, 3),
                "queue": round(result.queue_s * 1e3, 3),
                "inference": round(result.inference_s * 1e3, 3),
                "total": round(total_s * 1e3, 3),
            },
            "batch_size": result.batch_images,
        }

    def model_summaries(self) -> list[dict[str, Any]]:
        out = []
        for name, served in sorted(self.models.items()):
            lm = served.model
            out.append(
                {
                    **lm.entry.summary(),
                    "default": name == self.default_model,
                    "classes": len(lm.classes),
                    "input": {k: lm.input_spec.get(k) for k in ("height", "width", "resize", "crop")},
                    "resident_bytes": lm.resident_bytes,
                }
            )
        return out

    def close(self) -> None:
        for served in self.models.values():
            served.batcher.close()
