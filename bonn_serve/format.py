"""Reader and writer of the `.bonn` packed model format (spec: docs/format.md).

Pure numpy and the standard library: no pickle, nothing from the file is ever executed. Every structural
property the engine relies on is checked here; the C++ engine re-checks shapes when it builds the graph.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"\x89BONN\r\n\x1a"
MAJOR, MINOR = 1, 0
PREFIX = struct.Struct("<8sHHI32s")  # magic, major, minor, header_len, sha256(header)
ALIGN = 64
MAX_HEADER = 16 << 20
MAX_NDIM = 8      # tensor ranks: weights are 4-D at most
MAX_OPS = 4096    # ResNet-18 has ~40; bounds the engine's buffer planning (quadratic in values)
DTYPES = {"float32": np.dtype("<f4"), "uint64": np.dtype("<u8")}


class BonnFormatError(ValueError):
    """The file is not a valid .bonn model; the message names the file and the problem."""


@dataclass
class PackedModel:
    header: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    checksum: str = ""  # sha256 of the whole file

    @property
    def ops(self) -> list[dict[str, Any]]:
        return self.header["graph"]["ops"]

    @property
    def classes(self) -> list[str]:
        return self.header["classes"]

    @property
    def input_spec(self) -> dict[str, Any]:
        return self.header["input"]

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


# ---------------------------------------------------------------------------------------------- packing
def pack_sign_bits(w: np.ndarray) -> np.ndarray:
    """Pack a float weight [O, kh, kw, I] into OHWI_bits64 words: bit c%64 of word c//64 is 1 iff w < 0."""
    o, kh, kw, ci = w.shape
    words = (ci + 63) // 64
    neg = np.zeros((o, kh, kw, words * 64), dtype=np.uint8)
    neg[..., :ci] = w < 0
    bits = np.packbits(neg.reshape(o, kh, kw, words, 64), axis=-1, bitorder="little")  # 8 bytes per word
    return np.ascontiguousarray(bits).view("<u8").reshape(o, kh, kw, words)


def unpack_sign_bits(bits: np.ndarray, in_channels: int) -> np.ndarray:
    """Inverse of pack_sign_bits: returns +-1 float32 [O, kh, kw, in_channels]."""
    o, kh, kw, words = bits.shape
    raw = np.unpackbits(np.ascontiguousarray(bits).view(np.uint8).reshape(o, kh, kw, words * 8),
                        axis=-1, bitorder="little")[..., :in_channels]
    return np.where(raw == 1, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------- writer
def write_bonn(path: str | Path, header: dict[str, Any], tensors: dict[str, tuple[np.ndarray, str]],
               bits_axis_len: dict[str, int] | None = None) -> str:
    """Write a .bonn file. `tensors` maps name -> (array, layout). Returns the file's sha256."""
    bits_axis_len = bits_axis_len or {}
    table, chunks, offset = [], [], 0
    for name, (arr, layout) in tensors.items():
        dt = "uint64" if arr.dtype == np.uint64 else "float32"
        data = np.ascontiguousarray(arr, dtype=DTYPES[dt]).tobytes()
        pad = (-offset) % ALIGN
        chunks.append(b"\0" * pad + data)
        offset += pad
        entry = {"name": name, "dtype": dt, "shape": list(arr.shape), "layout": layout,
                 "offset": offset, "length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if dt == "uint64":
            entry["bits"] = {"axis_len": int(bits_axis_len[name]), "order": "lsb0",
                             "one_means": "negative", "pad": 0}
        table.append(entry)
        offset += len(data)
    payload = b"".join(chunks)
    hdr = dict(header)
    hdr["format"], hdr["version"] = "bonn", [MAJOR, MINOR]
    hdr["payload"] = {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    hdr["tensors"] = table
    hjson = json.dumps(hdr, indent=1, sort_keys=False).encode("utf-8")
    prefix = PREFIX.pack(MAGIC, MAJOR, MINOR, len(hjson), hashlib.sha256(hjson).digest())
    head = prefix + hjson
    blob = head + b"\0" * ((-len(head)) % ALIGN) + payload
    Path(path).write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------------------------- reader
def read_bonn(path: str | Path) -> PackedModel:
    """Read and fully validate a .bonn file. Raises BonnFormatError naming the file and the problem."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise BonnFormatError(f"{path}: cannot read model file: {e.strerror or e}") from None
    try:
        return parse_bonn(blob)
    except BonnFormatError as e:
        raise BonnFormatError(f"{path}: {e}") from None


def parse_bonn(blob: bytes) -> PackedModel:
    """Validate and decode a .bonn file's bytes. Every problem is a BonnFormatError: the checks below are
    explicit, and whatever a hostile header still slips past them (a 100k-deep JSON nesting, a 5000-digit
    integer, a list where a string belongs) is turned into one here, not a traceback."""
    try:
        return _parse(blob)
    except BonnFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, OverflowError) as e:
        raise BonnFormatError(f"malformed header: {type(e).__name__}: {str(e)[:200]}") from None


def _parse(blob: bytes) -> PackedModel:
    if len(blob) < PREFIX.size:
        raise BonnFormatError(f"truncated: {len(blob)} bytes is shorter than the {PREFIX.size}-byte prefix")
    magic, major, minor, hlen, hsum = PREFIX.unpack_from(blob, 0)
    if magic != MAGIC:
        raise BonnFormatError(f"bad magic {magic!r}: not a .bonn model file")
    if major != MAJOR:
        raise BonnFormatError(f"unsupported version {major}.{minor}; this reader supports {MAJOR}.x")
    if not 1 <= hlen <= MAX_HEADER:
        raise BonnFormatError(f"header length {hlen} out of range")
    hend = PREFIX.size + hlen
    if len(blob) < hend:
        raise BonnFormatError(f"truncated: header needs {hend} bytes, file has {len(blob)}")
    hbytes = blob[PREFIX.size:hend]
    if hashlib.sha256(hbytes).digest() != hsum:
        raise BonnFormatError("checksum mismatch: header sha256 does not match (file corrupt or edited)")
    try:
        header = json.loads(hbytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BonnFormatError(f"malformed header JSON: {e}") from None
    if not isinstance(header, dict):
        raise BonnFormatError("malformed header: not a JSON object")

    payload_off = math.ceil(hend / ALIGN) * ALIGN
    plen = _get(header, "payload", dict).get("length")
    if not isinstance(plen, int) or isinstance(plen, bool) or plen < 0:
        raise BonnFormatError("malformed header: payload.length")
    if len(blob) < payload_off + plen:
        raise BonnFormatError(f"truncated: payload needs {payload_off + plen} bytes, file has {len(blob)}")
    if len(blob) > payload_off + plen:
        raise BonnFormatError(f"{len(blob) - payload_off - plen} trailing bytes after the payload")
    if any(blob[hend:payload_off]):  # no checksum covers the padding: it must hold nothing
        raise BonnFormatError("the padding between header and payload is not zero")
    payload = memoryview(blob)[payload_off:payload_off + plen]
    if hashlib.sha256(payload).hexdigest() != header["payload"].get("sha256"):
        raise BonnFormatError("checksum mismatch: payload sha256 does not match (file corrupt or edited)")

    tensors = _read_tensors(header, payload)
    _check_header_fields(header)
    _check_graph(header, tensors)
    return PackedModel(header, tensors, hashlib.sha256(blob).hexdigest())


def _get(d: dict, key: str, typ: type) -> Any:
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, typ) or isinstance(v, bool) and typ is int:
        raise BonnFormatError(f"malformed header: missing or invalid field {key!r}")
    return v


def _read_tensors(header: dict, payload: memoryview) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    spans = []
    for t in _get(header, "tensors", list):
        name = _get(t, "name", str)
        dtype = t.get("dtype")
        dt = DTYPES.get(dtype) if isinstance(dtype, str) else None
        if dt is None:
            raise BonnFormatError(f"tensor {name!r}: unsupported dtype {dtype!r}")
        shape = _get(t, "shape", list)
        if not 0 < len(shape) <= MAX_NDIM or not all(isinstance(s, int) and not isinstance(s, bool)
                                                     and 0 < s < 1 << 31 for s in shape):
            raise BonnFormatError(f"tensor {name!r}: invalid shape {shape}")
        off, length = _get(t, "offset", int), _get(t, "length", int)
        if length != math.prod(shape) * dt.itemsize:
            raise BonnFormatError(f"tensor {name!r}: length {length} does not match dtype and shape {shape}")
        if off < 0 or off % ALIGN:
            raise BonnFormatError(f"tensor {name!r}: offset {off} is not 64-byte aligned")
        if off + length > len(payload):
            raise BonnFormatError(f"tensor {name!r}: out of bounds (offset {off} + {length} > payload)")
        if name in tensors:
            raise BonnFormatError(f"duplicate tensor name {name!r}")
        data = payload[off:off + length]
        if hashlib.sha256(data).hexdigest() != t.get("sha256"):
            raise BonnFormatError(f"checksum mismatch: tensor {name!r}")
        spans.append((off, off + length, name))
        # copy: the engine keeps its own aligned copies anyway, and the file buffer can be freed.
        tensors[name] = np.frombuffer(data, dtype=dt).reshape(shape).copy()
    spans.sort()
    for (_, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise BonnFormatError(f"tensors {an!r} and {bn!r} overlap")
    # every payload byte outside a tensor is padding and must be zero (spec section 2.1): nothing hides there
    ends = [0] + [e for _, e, _ in spans]
    starts = [b for b, _, _ in spans] + [len(payload)]
    if any(any(payload[a:b]) for a, b in zip(ends, starts) if b > a):
        raise BonnFormatError("payload bytes outside the tensors are not zero")
    return tensors


def _check_header_fields(header: dict) -> None:
    _get(header, "model", dict)
    if not isinstance(header["model"].get("provenance", {}), dict):
        raise BonnFormatError("malformed header: model.provenance must be an object")
    inp = _get(header, "input", dict)
    for key in ("channels", "height", "width", "resize", "crop"):
        v = _get(inp, key, int)
        if not 0 < v <= 4096:
            raise BonnFormatError(f"input.{key} = {v} out of range")
    if inp["channels"] not in (1, 3):
        raise BonnFormatError(f"input.channels = {inp['channels']}: images have 1 (grey) or 3 (RGB)")
    # the net is checked and run at crop x crop, the size preprocessing hands it
    if not inp["height"] == inp["width"] == inp["crop"] <= inp["resize"]:
        raise BonnFormatError(f"input: height {inp['height']} and width {inp['width']} must equal crop "
                              f"{inp['crop']}, and resize {inp['resize']} must be >= crop")
    for key in ("mean", "std"):
        v = _get(inp, key, list)
        if len(v) != inp["channels"] or not all(isinstance(x, (int, float)) for x in v):
            raise BonnFormatError(f"input.{key} must list one number per channel")
    if any(s == 0 for s in inp["std"]):
        raise BonnFormatError("input.std must be non-zero")
    classes = _get(header, "classes", list)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise BonnFormatError("classes must be a non-empty list of strings")


# op -> (required tensor roles, optional tensor roles, required int attrs, number of inputs allowed)
OP_SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[int, ...]]] = {
    "conv2d": (("weight", "bias"), (), ("kernel", "stride", "padding", "in_channels", "out_channels"), (1,)),
    "maxpool2d": ((), (), ("kernel", "stride", "padding"), (1,)),
    "binary_conv2d": (("bn_scale", "bn_shift", "weight", "alpha"), ("prelu",),
                      ("kernel", "stride", "padding", "in_channels", "out_channels"), (1, 2)),
    "batchnorm": (("scale", "shift"), (), (), (1,)),
    "global_avgpool": ((), (), (), (1,)),
    "linear": (("weight", "bias"), (), ("in_features", "out_features"), (1,)),
}


def _check_graph(header: dict, tensors: dict[str, np.ndarray]) -> None:
    """Static checks: known ops, tensor roles present with the right shapes, values defined before use.
    Channel counts are tracked through the graph so mismatched layers are caught at load time."""
    graph = _get(header, "graph", dict)
    ops = _get(graph, "ops", list)
    if len(ops) > MAX_OPS:
        raise BonnFormatError(f"graph has {len(ops)} ops; the engine takes at most {MAX_OPS}")
    gin, gout = _get(graph, "input", str), _get(graph, "output", str)
    channels: dict[str, int] = {gin: header["input"]["channels"]}
    for i, op in enumerate(ops):
        kind = op.get("op") if isinstance(op, dict) else None
        if not isinstance(kind, str) or kind not in OP_SCHEMA:
            raise BonnFormatError(f"op #{i}: unknown op {kind!r}")
        label = f"op #{i} ({kind} {op.get('name', '?')!r})"
        req, opt, int_attrs, n_inputs = OP_SCHEMA[kind]
        inputs, out = op.get("inputs"), op.get("output")
        if not isinstance(inputs, list) or len(inputs) not in n_inputs:
            raise BonnFormatError(f"{label}: expects {n_inputs} inputs")
        for v in inputs:
            if not isinstance(v, str) or v not in channels:
                raise BonnFormatError(f"{label}: input value {v!r} is not defined before use")
        if not isinstance(out, str) or out in channels:
            raise BonnFormatError(f"{label}: output must be a new value name")
        attrs, troles = op.get("attrs", {}), op.get("tensors", {})
        if not isinstance(attrs, dict) or not isinstance(troles, dict):
            raise BonnFormatError(f"{label}: attrs and tensors must be objects")
        for a in int_attrs:
            v = attrs.get(a)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 1 << 20:
                raise BonnFormatError(f"{label}: attribute {a!r} missing or invalid")
        for a in ("kernel", "stride"):
            if a in int_attrs and attrs[a] < 1:
                raise BonnFormatError(f"{label}: attribute {a!r} must be >= 1")
        if attrs.get("act", "none") not in ("none", "relu"):
            raise BonnFormatError(f"{label}: unknown activation {attrs.get('act')!r}")
        for role in set(troles) - set(req) - set(opt):
            raise BonnFormatError(f"{label}: unexpected tensor role {role!r}")
        t = {}
        for role in req + opt:
            if role not in troles:
                if role in req:
                    raise BonnFormatError(f"{label}: missing tensor role {role!r}")
                continue
            if not isinstance(troles[role], str) or troles[role] not in tensors:
                raise BonnFormatError(f"{label}: tensor {troles[role]!r} not in the tensor table")
            t[role] = tensors[troles[role]]

        cin = channels[inputs[0]]

        def expect(role: str, shape: tuple[int, ...], dtype: str = "float32") -> None:
            got = t[role]
            if tuple(got.shape) != shape or got.dtype != DTYPES[dtype]:
                raise BonnFormatError(f"shape mismatch: {label} tensor {role!r} is {list(got.shape)} "
                                      f"{got.dtype}, expected {list(shape)} {dtype}")

        if kind in ("conv2d", "binary_conv2d"):
            k, ci, co = attrs["kernel"], attrs["in_channels"], attrs["out_channels"]
            if ci != cin:
                raise BonnFormatError(f"shape mismatch: {label} in_channels {ci} but its input has {cin}")
            if co < 1:
                raise BonnFormatError(f"{label}: out_channels must be >= 1")
            if kind == "conv2d":
                expect("weight", (co, k, k, ci))
                expect("bias", (co,))
            else:
                expect("weight", (co, k, k, (ci + 63) // 64), "uint64")
                if ci % 64 and np.any(t["weight"][..., -1] >> np.uint64(ci % 64)):
                    # the kernel counts every bit of a word: a set pad bit would shift the output silently
                    raise BonnFormatError(f"{label}: packed weight has bits set beyond in_channels {ci}")
                expect("bn_scale", (ci,))
                expect("bn_shift", (ci,))
                expect("alpha", (1,))
                if "prelu" in t:
                    expect("prelu", (co,))
                if len(inputs) == 2 and channels[inputs[1]] != co:
                    raise BonnFormatError(f"shape mismatch: {label} residual has {channels[inputs[1]]} "
                                          f"channels, output has {co}")
            channels[out] = co
        elif kind == "batchnorm":
            expect("scale", (cin,))
            expect("shift", (cin,))
            channels[out] = cin
        elif kind == "linear":
            fi, fo = attrs["in_features"], attrs["out_features"]
            if fi != cin:
                raise BonnFormatError(f"shape mismatch: {label} in_features {fi} but its input has {cin}")
            expect("weight", (fo, fi))
            expect("bias", (fo,))
            channels[out] = fo
        else:
            channels[out] = cin
    if gout not in channels:
        raise BonnFormatError(f"graph output {gout!r} is never produced")
    if channels[gout] != len(header["classes"]):
        raise BonnFormatError(f"shape mismatch: model has {channels[gout]} outputs but "
                              f"{len(header['classes'])} class names")
