"""bonn_serve.registry: registration into the BentoML store, idempotence, cards, names, tamper detection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _serving import BONN_NAME, FP_NAME, REPO, export_random_models

from bonn_serve import registry


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("exported")
    return export_random_models(d)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh BentoML model store for each test (the provider override works even after bentoml has
    resolved its home in this process)."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "home"))
    BentoMLContainer.model_store.set(ModelStore(str(tmp_path / "home" / "models")))
    yield tmp_path / "home"
    BentoMLContainer.model_store.reset()


@pytest.fixture
def workdir(tmp_path, model_files):
    """A models/ directory with copies of the exported files (tests may edit or add cards)."""
    d = tmp_path / "models"
    d.mkdir()
    for f in model_files:
        shutil.copy(f, d / f.name)
    return d


def test_register_bonn_with_fp_baseline(store, workdir):
    results = registry.register(workdir / f"{BONN_NAME}.bonn", fp=workdir / f"{FP_NAME}.onnx")
    assert [(e.name, created) for e, created in results] == [(BONN_NAME, True), (FP_NAME, True)]
    bonn, fp = (e for e, _ in results)
    assert bonn.labels["backend"] == registry.BONN_BACKEND and fp.labels["backend"] == registry.FP_BACKEND
    assert bonn.labels["arch"] == "wrn22-16" and bonn.labels["dataset"] == "cifar10"
    assert bonn.labels["baseline"] == FP_NAME and fp.labels["baseline_of"] == BONN_NAME
    assert bonn.metadata["sha256"] == registry.sha256_file(workdir / f"{BONN_NAME}.bonn")
    assert bonn.metadata["file_bytes"] == (workdir / f"{BONN_NAME}.bonn").stat().st_size
    assert 0 < bonn.metadata["weight_bytes"] < fp.metadata["weight_bytes"]
    assert fp.metadata["classes"] == bonn.metadata["classes"] and len(bonn.metadata["classes"]) == 10
    assert fp.metadata["input"]["crop"] == 32
    assert bonn.path.read_bytes() == (workdir / f"{BONN_NAME}.bonn").read_bytes()
    assert {e.name for e in registry.list_models()} == {BONN_NAME, FP_NAME}


def test_registration_is_idempotent(store, workdir):
    first = registry.register(workdir / f"{BONN_NAME}.bonn", fp=workdir / f"{FP_NAME}.onnx")
    again = registry.register(workdir / f"{BONN_NAME}.bonn", fp=workdir / f"{FP_NAME}.onnx")
    assert [created for _, created in again] == [False, False]
    assert [e.tag for e, _ in again] == [e.tag for e, _ in first]
    assert len(registry.list_models(all_versions=True)) == 2


def test_changed_card_makes_a_new_version(store, workdir):
    bonn = workdir / f"{BONN_NAME}.bonn"
    ((first, _),) = registry.register(bonn)
    (workdir / f"{BONN_NAME}.card.json").write_text(json.dumps({"accuracy": {"cifar10_test": 0.861}}))
    ((second, created),) = registry.register(bonn)
    assert created and second.version != first.version
    assert second.accuracy == pytest.approx(0.861)
    assert registry.get(BONN_NAME).version == second.version  # latest
    assert registry.get(f"{BONN_NAME}:{first.version}").version == first.version


def test_card_fields_and_fp_baseline_from_card(store, workdir):
    (workdir / f"{BONN_NAME}.card.json").write_text(
        json.dumps(
            {"name": "bonn-small", "dataset": "cifar10", "accuracy": 86.1, "fp_baseline": f"{FP_NAME}.onnx"}
        )
    )
    (workdir / f"{FP_NAME}.card.json").write_text(json.dumps({"name": "fp-small", "accuracy": 0.93}))
    results = registry.register(workdir / f"{BONN_NAME}.bonn")
    by_name = {e.name: e for e, _ in results}
    assert set(by_name) == {"bonn-small", "fp-small"}
    assert by_name["bonn-small"].accuracy == pytest.approx(0.861)  # percent normalised to a fraction
    assert by_name["fp-small"].accuracy == pytest.approx(0.93)
    assert by_name["bonn-small"].labels["baseline"] == "fp-small"


def test_register_dir_pairs_fp_by_arch(store, workdir):
    results = registry.register_dir(workdir)
    assert {e.name for e, _ in results} == {BONN_NAME, FP_NAME}
    assert all(created for _, created in results)
    assert not any(created for _, created in registry.register_dir(workdir))


def test_tampered_file_is_refused_at_load(store, workdir):
    from bonn_serve.backends import load_model

    (entry, _), (fp_entry, _) = registry.register(
        workdir / f"{BONN_NAME}.bonn", fp=workdir / f"{FP_NAME}.onnx"
    )
    assert load_model(entry, threads=1).classes == entry.metadata["classes"]
    data = bytearray(fp_entry.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    fp_entry.path.write_bytes(bytes(data))
    with pytest.raises(registry.RegistryError, match="does not match its registered sha256"):
        registry.verified_path(registry.get(FP_NAME))
    with pytest.raises(registry.RegistryError, match="changed after registration"):
        load_model(registry.get(FP_NAME), threads=1)
    entry.path.unlink()
    with pytest.raises(registry.RegistryError, match="missing"):
        registry.verified_path(registry.get(BONN_NAME))


def test_register_again_repairs_a_damaged_store(store, workdir):
    """The stored copy was deleted: registering the same file again must store a fresh, verifiable version, not
    point at the broken one (which would leave `serve` failing on every start)."""
    ((entry, _),) = registry.register(workdir / f"{BONN_NAME}.bonn")
    entry.path.unlink()
    ((again, created),) = registry.register(workdir / f"{BONN_NAME}.bonn")
    assert created and again.version != entry.version
    assert registry.verified_path(registry.get(BONN_NAME)).is_file()


def test_register_refuses_a_stale_card_a_name_clash_and_an_unrunnable_onnx(store, workdir, tmp_path):
    bonn, fp = workdir / f"{BONN_NAME}.bonn", workdir / f"{FP_NAME}.onnx"
    card = bonn.with_suffix(".card.json")
    card.write_text(json.dumps({"name": BONN_NAME, "sha256": "0" * 64}))  # written for another file
    with pytest.raises(registry.RegistryError, match="describes another file"):
        registry.register(bonn)
    card.unlink()
    with pytest.raises(registry.RegistryError, match="BONN's own name"):
        registry.register(bonn, fp=fp, fp_name=BONN_NAME)
    fp_card = fp.with_suffix(".card.json")
    fp_card.write_text(json.dumps({"name": FP_NAME, "input": {"channels": 3, "height": 32, "width": 32}}))
    with pytest.raises(registry.RegistryError, match="input spec or classes"):  # no resize/crop/mean/std
        registry.register(bonn, fp=fp)
    fp_card.unlink()
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(registry.RegistryError, match="onnxruntime cannot run it"):
        registry.register(bonn, fp=empty)


@pytest.mark.parametrize("name", ["", "A", "../x", "a/b", "x" * 64, "-lead", "a b", "a:b", ".hidden", "é",
                                  "trail-", "trail_", "trail."])
def test_invalid_names_rejected(name):
    with pytest.raises(registry.RegistryError):
        registry.validate_name(name)


def test_parse_tag():
    assert registry.parse_tag("bonn-wrn22-16") == ("bonn-wrn22-16", None)
    assert registry.parse_tag("bonn-wrn22-16:latest") == ("bonn-wrn22-16", None)
    assert registry.parse_tag("m:abc123") == ("m", "abc123")
    for bad in ("m:../../x", "../m", "m:", "m:a/b"):
        if bad == "m:":
            assert registry.parse_tag(bad) == ("m", None)
            continue
        with pytest.raises(registry.RegistryError):
            registry.parse_tag(bad)


def test_unknown_model_lookup(store):
    with pytest.raises(registry.RegistryError, match="not registered"):
        registry.get("missing-model")


def test_rejects_non_bonn_and_bad_baseline(store, workdir, tmp_path):
    with pytest.raises(registry.RegistryError, match="expected a packed .bonn"):
        registry.register(workdir / f"{FP_NAME}.onnx")
    with pytest.raises(registry.RegistryError, match=".onnx"):
        registry.register(workdir / f"{BONN_NAME}.bonn", fp=tmp_path / "missing.onnx")
    (workdir / f"{BONN_NAME}.card.json").write_text("{not json")
    with pytest.raises(registry.RegistryError, match="unreadable model card"):
        registry.register(workdir / f"{BONN_NAME}.bonn")


def test_onnx_weight_bytes_matches_onnx_package(model_files):
    onnx = pytest.importorskip("onnx")
    import numpy as np

    m = onnx.load(str(model_files[1]))
    expected = sum(
        int(np.prod(t.dims)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        for t in m.graph.initializer
    )
    assert registry.onnx_weight_bytes(model_files[1]) == expected


def test_card_accuracy_forms():
    assert registry.card_accuracy({"accuracy": 0.5}, None) == 0.5
    assert registry.card_accuracy({"accuracy": 91.2}, None) == pytest.approx(0.912)
    assert registry.card_accuracy({"accuracy": {"cifar10_val": 0.7, "cifar10_test": 0.8}}, "cifar10") == 0.7
    assert registry.card_accuracy({"accuracy": {"val": 0.7, "test": 0.8}}, None) == 0.8
    assert registry.card_accuracy({"accuracy": "high"}, None) is None
    assert registry.card_accuracy({}, None) is None


# ------------------------------------------------------------------------------------------------ CLI
def cli(*args: str, home: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    return subprocess.run(
        [sys.executable, "-m", "bonn_serve", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_register_and_models(tmp_path, workdir):
    home = tmp_path / "clihome"
    out = cli(
        "register", str(workdir / f"{BONN_NAME}.bonn"), "--fp", str(workdir / f"{FP_NAME}.onnx"), home=home
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("registered:") == 2
    listing = cli("models", home=home)
    assert listing.returncode == 0 and BONN_NAME in listing.stdout and "onnxruntime-fp32" in listing.stdout
    as_json = json.loads(cli("models", "--json", home=home).stdout)
    assert {m["name"] for m in as_json} == {BONN_NAME, FP_NAME}
    bad = cli("register", str(tmp_path / "nope.bonn"), home=home)
    assert bad.returncode == 1 and "cannot read" in bad.stderr


def test_cli_serve_without_models_explains(tmp_path):
    empty = tmp_path / "empty_models"
    empty.mkdir()
    out = cli("serve", "--models-dir", str(empty), "--port", "1", home=tmp_path / "h")
    assert out.returncode == 2
    assert "no model to serve" in out.stderr and "bonn-serve export" in out.stderr


def test_cli_serve_refuses_tampered_store_and_bad_settings(tmp_path, workdir):
    home = tmp_path / "h"
    assert cli("register", str(workdir), home=home).returncode == 0
    env_bad = cli("serve", "--models-dir", str(workdir), "--port", "1", "--threads", "0", home=home)
    assert env_bad.returncode == 2 and "BONN_THREADS=0 is out of range" in env_bad.stderr
    stored = next((home / "models" / BONN_NAME).glob("*/model.bonn"))
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    out = cli("serve", "--no-register", "--port", "1", home=home)
    assert out.returncode == 1 and "does not match its registered sha256" in out.stderr


def test_cards_with_nulls_register(store, workdir):
    """Real training cards carry nulls (e.g. an unset config option); BentoML metadata rejects None, so the
    registry drops them from metadata and keeps the card verbatim in card.json."""
    card = {"name": BONN_NAME, "accuracy": 0.5, "training": {"config": {"limit_train": None, "lr": 0.1}},
            "per_class": [0.5, None]}
    (workdir / f"{BONN_NAME}.card.json").write_text(json.dumps(card))
    (workdir / f"{FP_NAME}.card.json").write_text(json.dumps({"name": FP_NAME, "notes": None}))
    results = registry.register(workdir / f"{BONN_NAME}.bonn", fp=workdir / f"{FP_NAME}.onnx")
    bonn = results[0][0]
    assert bonn.metadata["card"]["training"]["config"] == {"lr": 0.1}
    assert json.loads((bonn.path.parent / "card.json").read_text())["training"]["config"]["limit_train"] is None


def test_shipped_models_register(store, tmp_path):
    """The models/ directory as shipped registers cleanly (what `bonn-serve serve` does on first use)."""
    shipped = REPO / "models"
    if not any(shipped.glob("*.bonn")):
        pytest.skip("no shipped models")
    names = {e.name for e, _ in registry.register_dir(shipped)}
    assert any(n.startswith("bonn-") for n in names) and any(n.startswith("fp-") for n in names)


def test_shipped_wide_model_registers_on_request(store):
    """models/wide/ is not registered by `bonn-serve serve` (models/*.bonn only); `bonn-serve register` of the
    file puts it in the store with its card's arch and engine accuracy, and no FP baseline (none is shipped)."""
    wide = REPO / "models" / "wide" / "bonn-wrn22-64.bonn"
    if not wide.exists():
        pytest.skip("no shipped wide model")
    assert not any(n.startswith("bonn-wrn22-64") for n in
                   (e.name for e, _ in registry.register_dir(REPO / "models")))
    (entry, created), = registry.register(wide)
    card = json.loads(wide.with_name("bonn-wrn22-64.card.json").read_text())
    assert created and entry.name == "bonn-wrn22-64" and entry.kind == "bonn"
    assert entry.labels["arch"] == "wrn22-64" and entry.labels["baseline"] == ""
    assert entry.labels["accuracy"] == f"{card['accuracy']['test_top1']:.4f}"
