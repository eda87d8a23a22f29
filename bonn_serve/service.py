"""The BentoML service: `bentoml serve bonn_serve.service:BonnClassifier` (or `bonn-serve serve`).

Each worker loads every served model from the BentoML store (sha256-verified): the BONN into the XNOR
engine, the FP baseline into onnxruntime, each behind its own adaptive micro-batcher. The HTTP routes
(/classify, /models, /compare; see bonn_serve/http_api.py and docs/serving.md) are a Starlette app mounted
on the service; BentoML adds /metrics, /healthz, /livez, /readyz and the Swagger UI at /.
"""

from __future__ import annotations

from bonn_serve.registry import setup_environment

setup_environment()  # BENTOML_HOME / BENTOML_DO_NOT_TRACK must be set before bentoml reads them

import bentoml

from bonn_serve import registry
from bonn_serve.classifier import Classifier
from bonn_serve.http_api import build_app
from bonn_serve.settings import Settings, load_settings

SETTINGS = load_settings()


def served_entries(settings: Settings) -> list[registry.ModelEntry]:
    """BONN_MODELS if set, else the latest version of every registered bonn-serve model."""
    entries = [registry.get(tag) for tag in settings.models] if settings.models else registry.list_models()
    if not entries:
        raise registry.RegistryError(
            "no bonn-serve models in the BentoML store; run `bonn-serve register "
            "MODEL.bonn` or `bonn-serve serve` (which registers models/)"
        )
    return entries


http_app = build_app(
    lambda: bentoml.get_current_service().classifier,
    base_openapi=lambda: BonnClassifier.openapi_spec.asdict(),
)


@bentoml.asgi_app(http_app, path="/", name="bonn_api")
@bentoml.service(
    name="bonn_classifier",
    workers=SETTINGS.workers,
    resources={"cpu": str(SETTINGS.workers * SETTINGS.threads)},
    # BentoML's limiter answers a bare 429; ours (http_api.classify) sheds /classify with 503 + Retry-After
    # first, so BentoML's is only a backstop for the other routes.
    traffic={"timeout": 60, "max_concurrency": SETTINGS.max_concurrency * 4},
)
class BonnClassifier:
    def __init__(self) -> None:
        self.classifier = Classifier.from_registry(SETTINGS, served_entries(SETTINGS))
