"""Schemathesis against the running service's own OpenAPI document (/docs.json): no input the schema allows
(or, in negative mode, almost allows) may produce a server error. Bounded examples per operation keep the
default run well under a minute; `-m slow` runs many more.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="exporting a random test model needs torch (train extra)",
)
EXAMPLES = int(os.environ.get("BONN_SCHEMATHESIS_EXAMPLES", "15"))


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    from bonn_serve import loadtest as lt

    d = tmp_path_factory.mktemp("schemathesis")
    bonn, fp = lt.export_random_models(d / "models")
    lt.register_models(d / "home", bonn, fp)
    with lt.start_server(
        d / "home", d / "server.log", env_extra={"BONN_WORKERS": "1"}, extra_args=["--no-register"]
    ) as srv:
        yield srv
        assert lt.http_get(srv.url + "/livez")[0] == 200, "the server died under schemathesis"


@pytest.fixture(scope="module")
def live_document(live_server) -> dict:
    import httpx

    return httpx.get(live_server.url + "/docs.json", timeout=30).json()


@pytest.fixture(scope="module")
def api_schema(live_server, live_document):
    schema = schemathesis.openapi.from_dict(live_document)
    schema.config.update(base_url=live_server.url)
    return schema


def _fuzz_operation(operation, mode, examples: int) -> Counter:
    # schemathesis' pytest plugin (from_fixture/parametrize) breaks on pytest 9 (it writes Function._nodeid),
    # so drive its hypothesis strategies directly: one strategy per operation and generation mode.
    statuses: Counter = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(timeout=30)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error])

    run()
    return statuses


def _operations(api_schema) -> list:
    ops = [result.ok() for result in api_schema.get_all_operations()]
    assert ops, "the schema describes no operation"
    return ops


def _has_inputs(op) -> bool:
    return bool(op.definition.raw.get("parameters") or op.definition.raw.get("requestBody"))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors(api_schema, mode) -> None:
    seen = {}
    for op in _operations(api_schema):
        if mode == GenerationMode.NEGATIVE and not _has_inputs(op):
            continue  # nothing to make invalid: hypothesis would report the strategy unsatisfiable
        seen[f"{op.method.upper()} {op.path}"] = _fuzz_operation(op, mode, EXAMPLES)
    print({k: dict(v) for k, v in seen.items()})
    assert sum(seen["POST /classify"].values()) >= 1, seen


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors_long(api_schema, mode) -> None:
    for op in _operations(api_schema):
        if mode == GenerationMode.NEGATIVE and not _has_inputs(op):
            continue
        _fuzz_operation(op, mode, 10 * EXAMPLES)


def test_openapi_documents_the_api(live_document) -> None:
    """/docs.json must describe the public routes (clients and schemathesis rely on it)."""
    paths = live_document.get("paths", {})
    for path, method in (("/classify", "post"), ("/models", "get"), ("/compare", "get"), ("/readyz", "get")):
        assert method in paths.get(path, {}), (
            f"{method.upper()} {path} missing from /docs.json: {sorted(paths)}"
        )
