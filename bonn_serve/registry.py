"""The model registry: packed BONN models and their full-precision ONNX baselines in the BentoML model store.

A registered model is a BentoML model (`$BENTOML_HOME/models/<name>/<version>/`) holding the file
(`model.bonn` or `model.onnx`) and its card (`card.json`). Labels are for people and `bentoml models list`
(project, kind, arch, dataset, backend, accuracy, baseline); metadata holds what the service checks
(the file's sha256 and size, weight bytes, classes and input preprocessing). Registering the same file
with the same card twice returns the existing version. Loading re-hashes the stored file, so a model
edited on disk after registration is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_LABEL = "bonn-serve"
BONN_BACKEND = "bonn-xnor"  # the bit-packed XNOR/popcount engine
FP_BACKEND = "onnxruntime-fp32"  # the full-precision baseline
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")  # BentoML: ends in a letter or digit too
VERSION_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
CARD_SUFFIX = ".card.json"


class RegistryError(ValueError):
    """A registry operation failed; the message says what and which model."""


@dataclass
class ModelEntry:
    name: str
    version: str
    kind: str  # "bonn" or "fp"
    backend: str
    path: Path  # the stored model file
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def card(self) -> dict[str, Any]:
        return self.metadata.get("card") or {}

    @property
    def accuracy(self) -> float | None:
        v = self.labels.get("accuracy")
        return float(v) if v not in (None, "", "unknown") else None

    def summary(self) -> dict[str, Any]:
        """What /models and `bonn-serve models` show."""
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "backend": self.backend,
            "arch": self.labels.get("arch"),
            "dataset": self.labels.get("dataset"),
            "accuracy": self.accuracy,
            "weight_bytes": self.metadata.get("weight_bytes"),
            "file_bytes": self.metadata.get("file_bytes"),
            "sha256": self.metadata.get("sha256"),
            "baseline": self.labels.get("baseline") or None,
            "baseline_of": self.labels.get("baseline_of") or None,
        }


# --------------------------------------------------------------------------------------------- environment
def setup_environment(default_home: str | Path = "bentoml_home") -> Path:
    """Point BentoML at a local store unless BENTOML_HOME is set, and switch its usage tracking off.
    Must run before bentoml resolves its home (the first store access)."""
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    home = os.environ.get("BENTOML_HOME") or str(Path(default_home).resolve())
    os.environ["BENTOML_HOME"] = home
    return Path(home)


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RegistryError(
            f"invalid model name {name!r}: use 1-63 characters from a-z, 0-9, '.', '_', '-' "
            "starting and ending with a letter or digit"
        )
    return name


def parse_tag(tag: str) -> tuple[str, str | None]:
    """'name' or 'name:version' -> (name, version or None), both validated (no path tricks possible)."""
    name, _, version = tag.partition(":")
    validate_name(name)
    if version in ("", "latest"):
        return name, None
    if not VERSION_RE.match(version):
        raise RegistryError(f"invalid model version {version!r}")
    return name, version


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- cards
def card_path_for(model_path: Path) -> Path | None:
    """`X.card.json` next to `X.bonn` / `X.onnx` (also accepts `X.bonn.card.json`)."""
    for cand in (model_path.with_suffix(CARD_SUFFIX), model_path.with_name(model_path.name + CARD_SUFFIX)):
        if cand.is_file():
            return cand
    return None


def load_card(model_path: Path) -> dict[str, Any]:
    path = card_path_for(model_path)
    if path is None:
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegistryError(f"{path}: unreadable model card: {e}") from None
    if not isinstance(card, dict):
        raise RegistryError(f"{path}: a model card must be a JSON object")
    return card


def card_accuracy(card: dict[str, Any], dataset: str | None) -> float | None:
    """Cards give accuracy as a number or as {split: number}; prefer the dataset's test split."""
    acc = card.get("accuracy")
    if isinstance(acc, dict):
        keys = (
            [k for k in acc if dataset and k.startswith(dataset)]
            + [k for k in acc if "test" in k]
            + list(acc)
        )
        acc = next((acc[k] for k in keys if isinstance(acc[k], (int, float))), None)
    if isinstance(acc, (int, float)) and not isinstance(acc, bool) and 0.0 <= acc <= 100.0:
        return float(acc) / 100.0 if acc > 1.0 else float(acc)
    return None


# --------------------------------------------------------------------------------------------- ONNX weights
_ONNX_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def onnx_weight_bytes(path: str | Path) -> int:
    """Bytes of the graph initializers (prod(dims) x dtype size), read from the protobuf wire format so
    the runtime needs no `onnx` package. ModelProto.graph = field 7, GraphProto.initializer = field 5,
    TensorProto.dims = field 1, TensorProto.data_type = field 2."""
    data = Path(path).read_bytes()
    total = 0
    for fnum, _, val in _fields(data):
        if fnum == 7:
            for gnum, _, tensor in _fields(val):
                if gnum == 5:
                    dims, dtype = [], 1
                    for tnum, wire, tv in _fields(tensor):
                        if tnum == 1 and wire == 0:
                            dims.append(tv)
                        elif tnum == 1 and wire == 2:  # packed dims
                            dims.extend(v for _, _, v in _varints(tv))
                        elif tnum == 2 and wire == 0:
                            dtype = tv
                    n = 1
                    for d in dims:
                        n *= d
                    total += n * _ONNX_ITEMSIZE.get(dtype, 4)
    return total


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise RegistryError("malformed ONNX file (truncated varint)")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _varints(buf: bytes):
    i = 0
    while i < len(buf):
        v, i = _varint(buf, i)
        yield 0, 0, v


def _fields(buf: bytes):
    """(field number, wire type, value) for each field of a protobuf message; length-delimited values are
    bytes, varints ints; fixed-width values are skipped."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        fnum, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            yield fnum, wire, v
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise RegistryError("malformed ONNX file (field runs past the end)")
            yield fnum, wire, buf[i : i + n]
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise RegistryError(f"malformed ONNX file (wire type {wire})")


# --------------------------------------------------------------------------------------------- registration
def _bentoml():
    setup_environment()
    import bentoml

    return bentoml


def _entry(model: Any) -> ModelEntry:
    md = dict(model.info.metadata)
    labels = {k: str(v) for k, v in model.info.labels.items()}
    kind = labels.get("kind", "bonn")
    fname = "model.bonn" if kind == "bonn" else "model.onnx"
    return ModelEntry(
        model.tag.name,
        model.tag.version,
        kind,
        labels.get("backend", ""),
        Path(model.path_of(fname)),
        labels,
        md,
    )


def _find_same(name: str, sha: str, card_sha: str) -> ModelEntry | None:
    bentoml = _bentoml()
    try:
        existing = bentoml.models.list(name)
    except Exception:  # no such model yet
        return None
    for m in existing:
        md = m.info.metadata
        if md.get("sha256") == sha and md.get("card_sha256") == card_sha:
            entry = _entry(m)
            try:  # a stored copy that was deleted or damaged since is no match: register a fresh version
                verified_path(entry)
            except RegistryError:
                continue
            return entry
    return None


def metadata_safe(value: Any) -> Any:
    """BentoML metadata accepts only str/int/float/bool/lists/dicts, not None (cards have nulls, e.g. an
    unset config option): drop None entries recursively. The card itself is stored verbatim as card.json."""
    if isinstance(value, dict):
        return {str(k): metadata_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [metadata_safe(v) for v in value if v is not None]
    return value


def register_file(
    path: Path, kind: str, card: dict[str, Any], name: str, labels: dict[str, str], metadata: dict[str, Any]
) -> tuple[ModelEntry, bool]:
    """Store one model file with its card. Returns (entry, created); created is False when an identical
    file+card is already registered under `name`."""
    validate_name(name)
    sha = sha256_file(path)
    if card.get("sha256") and card["sha256"] != sha:  # a card written for another (older) file of that name
        raise RegistryError(f"{path}: its model card describes another file (card sha256 {card['sha256'][:12]}..., "
                            f"file {sha[:12]}...); rebuild the card (python -m training.model_card) or remove it")
    if metadata.get("bonn_sha256") not in (None, sha):  # the file changed since it was read and validated
        raise RegistryError(f"{path}: file changed during registration")
    card_sha = hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()
    same = _find_same(name, sha, card_sha)
    if same is not None:
        return same, False
    bentoml = _bentoml()
    fname = "model.bonn" if kind == "bonn" else "model.onnx"
    md = {
        "sha256": sha,
        "file_bytes": path.stat().st_size,
        "card_sha256": card_sha,
        "card": card,
        "source": str(path.resolve()),
        **metadata,
    }
    all_labels = {"project": PROJECT_LABEL, "kind": kind, **{k: str(v) for k, v in labels.items()}}
    with bentoml.models.create(name, labels=all_labels, metadata=metadata_safe(md)) as m:
        dst = Path(m.path_of(fname))
        dst.write_bytes(path.read_bytes())
        Path(m.path_of("card.json")).write_text(json.dumps(card, indent=1), encoding="utf-8")
        if sha256_file(dst) != sha:  # the source changed while we copied it
            raise RegistryError(f"{path}: file changed during registration")
    return _entry(bentoml.models.get(f"{name}:{m.tag.version}")), True


def _check_fp_spec(path: Path, spec: Any, classes: Any) -> None:
    """The FP card's preprocessing and class names obey the rules a .bonn header does (docs/format.md 2), so
    /readyz cannot say ready while every /classify of that model fails on a malformed spec."""
    from .format import BonnFormatError, _check_header_fields

    try:
        _check_header_fields({"model": {}, "input": spec, "classes": classes})
    except BonnFormatError as e:
        raise RegistryError(f"{path}: its card's input spec or classes: {e}") from None


def _check_onnx_runs(path: Path, spec: dict[str, Any], classes: int) -> None:
    """Run the FP baseline once in onnxruntime at its input size, so a file it cannot load, or whose output
    does not have one logit per class, fails at registration rather than in every server worker."""
    import numpy as np
    import onnxruntime as ort

    try:
        side, channels = int(spec["crop"]), int(spec["channels"])
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, channels, side, side), np.float32)})[0]
    except Exception as e:  # onnxruntime raises its own exception types; any of them means "cannot serve this"
        raise RegistryError(f"{path}: onnxruntime cannot run it at 1x{spec.get('channels')}x{spec.get('crop')}x"
                            f"{spec.get('crop')}: {str(e)[:300]}") from None
    if out.shape != (1, classes):
        raise RegistryError(f"{path}: outputs {list(out.shape)} for one image, expected [1, {classes}] (one logit "
                            "per class)")


def _check_engine_builds(path: Path, packed: Any) -> None:
    """Build the engine once, so a file it would refuse (a graph it cannot run at its input size, over its memory
    or compute limits) fails here with the reason, not in every server worker after registration."""
    from .engine import Engine
    from .format import BonnFormatError

    try:
        Engine(packed, threads=1)
    except ValueError as e:
        raise BonnFormatError(f"{path}: the engine refuses this model: {e}") from None


def register(
    path: str | Path, fp: str | Path | None = None, name: str | None = None, fp_name: str | None = None
) -> list[tuple[ModelEntry, bool]]:
    """Register a packed .bonn model and (from `fp` or the card's `fp_baseline`) its FP ONNX baseline."""
    from .format import read_bonn

    path = Path(path)
    if path.suffix != ".bonn":
        raise RegistryError(f"{path}: expected a packed .bonn model")
    packed = read_bonn(path)  # validates structure and all checksums
    _check_engine_builds(path, packed)
    card = load_card(path)
    hmodel = packed.header.get("model", {})
    arch = str(card.get("arch") or hmodel.get("arch") or "unknown")
    dataset = str(card.get("dataset") or ("cifar10" if arch.startswith("wrn22") else "unknown"))
    name = validate_name(name or card.get("name") or hmodel.get("name") or path.stem)
    accuracy = card_accuracy(card, dataset)
    if accuracy is None:
        accuracy = card_accuracy(hmodel.get("provenance", {}), dataset)

    fp_path = Path(fp) if fp else None
    if fp_path is None and card.get("fp_baseline"):
        fp_path = (path.parent / str(card["fp_baseline"])).resolve()
        if not fp_path.is_file():
            raise RegistryError(f"{path}: the card's fp_baseline {card['fp_baseline']!r} does not exist")
    results: list[tuple[ModelEntry, bool]] = []
    fp_entry_name = None
    if fp_path is not None:
        if fp_path.suffix != ".onnx" or not fp_path.is_file():
            raise RegistryError(f"{fp_path}: expected an existing .onnx file for the FP baseline")
        fp_card = load_card(fp_path)
        if card_path_for(fp_path) is not None and card_path_for(fp_path) == card_path_for(path):
            fp_card = {}  # X.bonn and X.onnx would share X.card.json: that card describes the BONN, not the FP
        fp_entry_name = validate_name(fp_name or fp_card.get("name") or fp_path.stem)
        if fp_entry_name == name:
            raise RegistryError(f"{fp_path}: the FP baseline would be registered under the BONN's own name {name!r}; "
                                "give it another (--fp-name, or its card's name)")
        fp_acc = card_accuracy(fp_card, dataset)
        fp_labels = {
            "arch": fp_card.get("arch") or arch,
            "dataset": fp_card.get("dataset") or dataset,
            "backend": FP_BACKEND,
            "accuracy": "unknown" if fp_acc is None else f"{fp_acc:.4f}",
            "baseline_of": name,
        }
        fp_md = {
            "weight_bytes": int(fp_card.get("weight_bytes") or onnx_weight_bytes(fp_path)),
            "classes": fp_card.get("classes") or packed.classes,
            "input": fp_card.get("input") or packed.input_spec,
        }
        _check_fp_spec(fp_path, fp_md["input"], fp_md["classes"])
        _check_onnx_runs(fp_path, fp_md["input"], len(fp_md["classes"]))
        results.append(register_file(fp_path, "fp", fp_card, fp_entry_name, fp_labels, fp_md))
    labels = {
        "arch": arch,
        "dataset": dataset,
        "backend": BONN_BACKEND,
        "accuracy": "unknown" if accuracy is None else f"{accuracy:.4f}",
        "baseline": fp_entry_name or "",
    }
    md = {
        "weight_bytes": packed.weight_bytes,
        "classes": packed.classes,
        "input": packed.input_spec,
        "bonn_sha256": packed.checksum,
    }
    results.insert(0, register_file(path, "bonn", card, name, labels, md))
    return results


def register_dir(models_dir: str | Path) -> list[tuple[ModelEntry, bool]]:
    """Register every .bonn in a directory with its baseline: from the card's fp_baseline, else
    `fp-<arch>.onnx` next to `bonn-<arch>.bonn`."""
    models_dir = Path(models_dir)
    results: list[tuple[ModelEntry, bool]] = []
    for bonn in sorted(models_dir.glob("*.bonn")):
        fp = None
        if not load_card(bonn).get("fp_baseline"):
            cand = bonn.with_name("fp-" + bonn.stem.removeprefix("bonn-") + ".onnx")
            fp = cand if cand.is_file() else None
        results.extend(register(bonn, fp=fp))
    return results


# --------------------------------------------------------------------------------------------- lookup
def list_models(all_versions: bool = False) -> list[ModelEntry]:
    """Registered bonn-serve models (latest version of each name unless all_versions)."""
    bentoml = _bentoml()
    models = [m for m in bentoml.models.list() if m.info.labels.get("project") == PROJECT_LABEL]
    models.sort(key=lambda m: (m.tag.name, m.creation_time), reverse=False)
    if not all_versions:
        latest: dict[str, Any] = {}
        for m in models:
            latest[m.tag.name] = m  # sorted by creation time: the last one wins
        models = list(latest.values())
    return [_entry(m) for m in models]


def get(tag: str) -> ModelEntry:
    """Look up 'name' (latest) or 'name:version'. Raises RegistryError if unknown."""
    bentoml = _bentoml()
    name, version = parse_tag(tag)
    try:
        model = bentoml.models.get(f"{name}:{version or 'latest'}")
    except Exception:
        raise RegistryError(f"model {tag!r} is not registered (see `bonn-serve models`)") from None
    if model.info.labels.get("project") != PROJECT_LABEL:
        raise RegistryError(f"model {tag!r} is not a bonn-serve model")
    return _entry(model)


def verified_path(entry: ModelEntry) -> Path:
    """The stored file, after checking its sha256 against what was recorded at registration."""
    if not entry.path.is_file():
        raise RegistryError(f"{entry.tag}: stored file {entry.path} is missing")
    actual = sha256_file(entry.path)
    if actual != entry.metadata.get("sha256"):
        raise RegistryError(
            f"{entry.tag}: stored file {entry.path} does not match its registered sha256 "
            f"(expected {entry.metadata.get('sha256')}, got {actual}); it was changed "
            "after registration; register it again"
        )
    return entry.path
