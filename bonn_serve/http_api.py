"""HTTP routes of the service (a Starlette app mounted into the BentoML server).

The raw request is read here rather than through BentoML's typed inputs, which answer bad uploads with 500:
the body is read up to a size limit, multipart or raw `image/*` bodies are parsed by us, and every client
mistake becomes a 4xx JSON `{"error": code, "detail": message}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from . import metrics
from .batcher import Overloaded
from .classifier import Classifier, RequestError

logger = logging.getLogger("bonn_serve")
IMAGE_FIELD = "image"
RAW_TYPES = ("application/octet-stream",)


def error_response(
    code: str, detail: str, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    metrics.ERRORS.labels(code).inc()
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError("bad_request", "invalid Content-Length header") from None
        if size > limit:
            raise RequestError(
                "request_too_large", f"request body is {size} bytes; the limit is {limit}", 413
            )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError("request_too_large", f"request body exceeds the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_images(request: Request, body: bytes, max_images: int) -> tuple[list[bytes], dict[str, str]]:
    """Image blobs and text fields (model, top_k) from a multipart or raw-image request body."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";")[0].strip().lower()
    params = {k: v for k, v in request.query_params.items() if k in ("model", "top_k")}
    if not body:
        raise RequestError(
            "empty_body",
            "the request body is empty; send an image as multipart field "
            f"'{IMAGE_FIELD}' or as a raw body with Content-Type: image/*",
        )
    if media.startswith("image/") or media in RAW_TYPES:
        return [body], params
    if media != "multipart/form-data":
        raise RequestError(
            "unsupported_media_type",
            f"Content-Type {media or '(none)'!r} is not supported; use multipart/form-data or image/*",
            415,
        )

    async def stream():
        yield body

    try:
        parser = MultiPartParser(
            request.headers, stream(), max_files=4 * max_images + 16, max_fields=64, max_part_size=64 << 10
        )
        form = await parser.parse()
    except Exception as e:  # MultiPartException and python-multipart's own errors: malformed body
        raise RequestError("bad_multipart", f"malformed multipart body: {e}") from None
    try:
        blobs, other_files = [], []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key == IMAGE_FIELD:
                    blobs.append(await value.read())
                else:
                    other_files.append(key)
            elif key == IMAGE_FIELD:
                raise RequestError(
                    "bad_field", f"field '{IMAGE_FIELD}' must be a file upload, not a text value"
                )
            elif key in ("model", "top_k"):
                params[key] = value
    finally:
        await form.close()
    if not blobs:
        got = f"; got file fields {sorted(set(other_files))}" if other_files else ""
        raise RequestError("missing_field", f"no multipart file field '{IMAGE_FIELD}'{got}")
    if len(blobs) > max_images:
        raise RequestError(
            "too_many_images", f"{len(blobs)} images in one request; the limit is {max_images}", 413
        )
    return blobs, params


def build_app(
    get_classifier: Callable[[], Classifier], base_openapi: Callable[[], dict[str, Any]] | None = None
) -> Starlette:
    """Routes /classify, /models and /compare; `get_classifier` returns this worker's Classifier.
    With `base_openapi` (BentoML's spec as a dict) also /docs.json with our routes merged in; BentoML adds
    its own /docs.json after mounted apps, so this one answers."""

    in_flight = 0  # /classify requests being served by this worker (one event loop: no lock needed)

    async def classify(request: Request) -> Response:
        nonlocal in_flight
        started = time.perf_counter()
        clf = get_classifier()
        if in_flight >= clf.settings.max_concurrency:
            # Shed here, with our 503 contract, before BentoML's own limiter would answer a bare 429.
            return error_response("overloaded", f"{in_flight} requests in flight; the limit is "
                                  f"{clf.settings.max_concurrency}", 503, {"Retry-After": "1"})
        in_flight += 1
        try:
            body = await read_body(request, clf.settings.max_body_bytes)
            blobs, params = await parse_images(request, body, clf.settings.max_images)
            result = await clf.classify(blobs, params.get("model"), params.get("top_k"), started=started)
            return JSONResponse(result)
        except RequestError as e:
            return error_response(e.code, e.detail, e.status, e.headers)
        except Overloaded as e:
            return error_response("overloaded", e.detail, 503, {"Retry-After": str(e.retry_after)})
        except Exception:
            logger.exception("classify failed")
            return error_response("internal", "an unexpected error occurred; see the server log", 500)
        finally:
            in_flight -= 1
            clf.refresh_process_gauges()

    async def models(request: Request) -> Response:
        clf = get_classifier()
        clf.refresh_process_gauges()
        return JSONResponse({"default": clf.default_model, "models": clf.model_summaries()})

    async def compare(request: Request) -> Response:
        from .compare import compare_report, render_html

        clf = get_classifier()
        clf.refresh_process_gauges()
        report = compare_report(clf)
        wants_html = request.query_params.get("format") == "html" or (
            "text/html" in request.headers.get("accept", "") and request.query_params.get("format") != "json"
        )
        if wants_html:
            return HTMLResponse(render_html(report))
        return JSONResponse(report)

    async def docs(request: Request) -> Response:
        from .openapi import PATHS, merged_spec

        try:
            base = base_openapi() if base_openapi else {}
        except Exception:  # never lose the document over BentoML internals; ours alone is still useful
            logger.exception("cannot build BentoML's OpenAPI document")
            base = {"openapi": "3.0.2", "info": {"title": "bonn_classifier", "version": "0"}, "paths": {}}
        return JSONResponse(merged_spec(base) if base else {"paths": PATHS})

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own 405 (a known route, another method) is plain text; ours are {error, detail} JSON
        status = getattr(exc, "status_code", 500)
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        detail = {404: f"no route {request.url.path!r}; see /docs", 405: f"{request.method} is not allowed on "
                  f"{request.url.path}"}.get(status, str(getattr(exc, "detail", "")))
        return error_response(code, detail, status, dict(getattr(exc, "headers", None) or {}))

    routes = [
        Route("/docs.json", docs, methods=["GET"]),
        Route("/classify", classify, methods=["POST"]),
        Route("/models", models, methods=["GET"]),
        Route("/compare", compare, methods=["GET"]),
    ]
    # No catch-all: BentoML mounts this app among its own routes (its index page and assets come after it), so
    # an unknown path is BentoML's to answer (a plain-text 404; docs/security.md, known gaps).
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
