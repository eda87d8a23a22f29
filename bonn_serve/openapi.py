"""OpenAPI description of the routes of our mounted app (/classify, /models, /compare).

BentoML's /docs.json (and so the Swagger UI at /) only describes BentoML's own APIs; http_api serves
/docs.json itself with these paths merged in, so the UI documents and can try the real endpoints.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "client error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error", "detail"],
                "properties": {
                    "error": {"type": "string", "description": "machine-readable code (docs/serving.md)"},
                    "detail": {"type": "string"},
                },
            }
        }
    },
}

_PREDICTION = {
    "type": "object",
    "required": ["label", "score"],
    "properties": {"label": {"type": "string"}, "score": {"type": "number", "minimum": 0, "maximum": 1}},
}

_CLASSIFY_RESPONSE = {
    "type": "object",
    "required": ["model", "version", "backend", "predictions", "timings_ms"],
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "string"},
        "backend": {"type": "string", "enum": ["bonn-xnor", "onnxruntime-fp32"]},
        "predictions": {
            "type": "array",
            "description": "one list per image, most probable first",
            "items": {"type": "array", "items": _PREDICTION},
        },
        "timings_ms": {
            "type": "object",
            "properties": {k: {"type": "number"} for k in ("decode", "queue", "inference", "total")},
        },
        "batch_size": {
            "type": "integer",
            "description": "images in the engine call that carried this request",
        },
    },
}

_QUERY = [
    {
        "name": "model",
        "in": "query",
        "required": False,
        "description": "registry name, optionally name:version (default: the BONN)",
        "schema": {"type": "string"},
    },
    {
        "name": "top_k",
        "in": "query",
        "required": False,
        "description": "1..classes, default 5",
        "schema": {"type": "integer", "minimum": 1},
    },
]

PATHS: dict[str, Any] = {
    "/classify": {
        "post": {
            "tags": ["bonn-serve"],
            "summary": "Classify one or more images",
            "description": "multipart field `image` (repeat it for several images), or one raw image body "
            "with Content-Type image/*. JPEG, PNG, WebP, BMP, GIF.",
            "parameters": _QUERY,
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image"],
                            "properties": {
                                "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                                "model": {"type": "string"},
                                "top_k": {"type": "integer", "minimum": 1},
                            },
                        }
                    },
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "200": {
                    "description": "predictions",
                    "content": {"application/json": {"schema": _CLASSIFY_RESPONSE}},
                },
                "400": _ERROR,
                "404": {**_ERROR, "description": "unknown model"},
                "413": {**_ERROR, "description": "body, image or image count over the limits"},
                "415": {**_ERROR, "description": "unsupported Content-Type"},
                "503": {**_ERROR, "description": "overloaded; see Retry-After"},
            },
        }
    },
    "/models": {
        "get": {
            "tags": ["bonn-serve"],
            "summary": "Served models (backend, accuracy, weight bytes, ...)",
            "responses": {"200": {"description": "served models", "content": {"application/json": {}}}},
        }
    },
    "/compare": {
        "get": {
            "tags": ["bonn-serve"],
            "summary": "BONN vs FP side by side (JSON, or HTML with charts)",
            "parameters": [
                {
                    "name": "format",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["json", "html"]},
                }
            ],
            "responses": {
                "200": {"description": "report", "content": {"application/json": {}, "text/html": {}}}
            },
        }
    },
}


def merged_spec(base: dict[str, Any]) -> dict[str, Any]:
    """BentoML's document with our paths added (ours win on a clash)."""
    spec = dict(base)
    spec["paths"] = {**(base.get("paths") or {}), **PATHS}
    tags = list(spec.get("tags") or [])
    if not any(isinstance(t, dict) and t.get("name") == "bonn-serve" for t in tags):
        tags.append({"name": "bonn-serve", "description": "image classification with BONN 1-bit models"})
    spec["tags"] = tags
    return spec
