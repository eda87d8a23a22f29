"""Exporters: a trained (or random) torch model -> `.bonn` packed file, and -> ONNX.

`.bonn` (docs/format.md) holds the BONN for the XNOR engine. ONNX comes in two forms: the full-precision
baseline network, and the BONN itself emulated in float (sign activations, +-1 weights x alpha), which any
ONNX runtime can run to check the engine.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bonn_serve import __version__
from bonn_serve.format import pack_sign_bits, write_bonn

from .binarize import BinaryConv2d
from .models import ARCHS, CIFAR10_CLASSES, BonnBlock, BonnNet, InputSpec


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference BN as x * scale + shift, computed in float32 the way PyTorch's CPU kernel does
    (scale = gamma * (1 / sqrt(var + eps)), shift = beta - mean * scale), so sign(BN(x)) matches bit for bit."""
    invstd = 1.0 / torch.sqrt(bn.running_var.float() + bn.eps)
    scale = bn.weight.float() * invstd
    return scale, bn.bias.float() - bn.running_mean.float() * scale


class _GraphBuilder:
    def __init__(self) -> None:
        self.ops: list[dict[str, Any]] = []
        self.tensors: dict[str, tuple[np.ndarray, str]] = {}
        self.bits_len: dict[str, int] = {}

    def tensor(self, name: str, arr: np.ndarray, layout: str, bits_len: int | None = None) -> str:
        self.tensors[name] = (arr, layout)
        if bits_len is not None:
            self.bits_len[name] = bits_len
        return name

    def op(self, kind: str, name: str, inputs: list[str], attrs: dict | None = None,
           tensors: dict[str, str] | None = None) -> str:
        out = name
        self.ops.append({"name": name, "op": kind, "inputs": inputs, "output": out,
                         "attrs": attrs or {}, "tensors": tensors or {}})
        return out

    def conv_bn(self, name: str, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: str) -> str:
        """A float conv with the following BN folded into its weight and bias."""
        scale, shift = bn_affine(bn)
        w = conv.weight.float() * scale.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else shift + conv.bias.float() * scale
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        return self.op("conv2d", name, [x],
                       dict(kernel=k, stride=s, padding=p, in_channels=conv.in_channels,
                            out_channels=conv.out_channels, act=act),
                       dict(weight=self.tensor(f"{name}.weight", _f32(w.permute(0, 2, 3, 1)), "OHWI"),
                            bias=self.tensor(f"{name}.bias", _f32(bias), "C")))

    def bonn_block(self, name: str, x: str, block: BonnBlock) -> str:
        conv: BinaryConv2d = block.conv  # type: ignore[assignment]
        residual = x
        if block.shortcut is not None:
            residual = self.conv_bn(f"{name}.shortcut", x, block.shortcut[0], block.shortcut[1], "none")
        scale, shift = bn_affine(block.bn)
        ohwi = _f32(conv.weight.permute(0, 2, 3, 1))
        tensors = dict(
            bn_scale=self.tensor(f"{name}.bn_scale", _f32(scale), "C"),
            bn_shift=self.tensor(f"{name}.bn_shift", _f32(shift), "C"),
            weight=self.tensor(f"{name}.weight", pack_sign_bits(ohwi), "OHWI_bits64", conv.in_channels),
            alpha=self.tensor(f"{name}.alpha", _f32(conv.alpha.reshape(1)), "S"),
            prelu=self.tensor(f"{name}.prelu", _f32(block.act.weight.expand(conv.out_channels)), "C"),
        )
        return self.op("binary_conv2d", name, [x, residual],
                       dict(kernel=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                            in_channels=conv.in_channels, out_channels=conv.out_channels), tensors)


def build_graph(model: BonnNet) -> _GraphBuilder:
    """Walk a binary BonnNet in eval mode and emit the .bonn op graph."""
    if not model.binary:
        raise ValueError("only binary models can be packed; export the full-precision baseline to ONNX")
    g = _GraphBuilder()
    stem = list(model.stem)
    relu = any(isinstance(m, nn.ReLU) for m in stem)
    x = g.conv_bn("stem", "input", stem[0], stem[1], "relu" if relu else "none")
    for m in stem[2:]:
        if isinstance(m, nn.MaxPool2d):
            x = g.op("maxpool2d", "stem.pool", [x], dict(kernel=m.kernel_size, stride=m.stride, padding=m.padding))
        elif not isinstance(m, nn.ReLU):
            raise ValueError(f"unsupported stem layer {m}")
    for si, stage in enumerate(model.stages):
        for bi, block in enumerate(stage):
            x = g.bonn_block(f"stages.{si}.{bi}", x, block)
    scale, shift = bn_affine(model.head_bn)
    x = g.op("batchnorm", "head_bn", [x], dict(act="relu"),
             dict(scale=g.tensor("head_bn.scale", _f32(scale), "C"),
                  shift=g.tensor("head_bn.shift", _f32(shift), "C")))
    x = g.op("global_avgpool", "pool", [x])
    fc = model.fc
    g.op("linear", "logits", [x], dict(in_features=fc.in_features, out_features=fc.out_features),
         dict(weight=g.tensor("fc.weight", _f32(fc.weight), "OI"), bias=g.tensor("fc.bias", _f32(fc.bias), "C")))
    return g


def default_classes(arch: str, num_classes: int) -> list[str]:
    if ARCHS[arch]["family"] == "wrn22" and num_classes == 10:
        return list(CIFAR10_CLASSES)
    return [f"class_{i}" for i in range(num_classes)]


def input_spec_header(spec: InputSpec) -> dict[str, Any]:
    """The `.bonn` header's preprocessing (docs/format.md 2), which the engine's users and evaluation follow."""
    return {"layout": "NCHW", "channels": 3, "height": spec.size, "width": spec.size, "color": "RGB",
            "resize": spec.resize, "crop": spec.size, "scale": 1.0 / 255.0,
            "mean": list(spec.mean), "std": list(spec.std)}


def export_bonn(model: BonnNet, path: str | Path, arch: str, provenance: dict | None = None,
                classes: list[str] | None = None, name: str | None = None) -> str:
    """Pack a binary model into a .bonn file. Returns the file's sha256."""
    model = model.eval()
    spec = ARCHS[arch]["input"]
    with torch.no_grad():
        g = build_graph(model)
    classes = list(classes or default_classes(arch, model.fc.out_features))
    if len(classes) != model.fc.out_features:
        raise ValueError(f"{len(classes)} class names for {model.fc.out_features} outputs")
    prov = {"exporter": f"bonn-serve {__version__}", "torch": torch.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    prov.update(provenance or {})
    header = {
        "model": {"name": name or f"bonn-{arch}", "arch": arch, "task": "image-classification",
                  "provenance": prov},
        "input": input_spec_header(spec),
        "classes": classes,
        "graph": {"input": "input", "output": "logits", "ops": g.ops},
    }
    return write_bonn(path, header, g.tensors, g.bits_len)


def export_onnx(model: nn.Module, path: str | Path, input_size: int | None = None, arch: str | None = None,
                opset: int = 17) -> None:
    """Export to ONNX (input "input" NCHW float32, output "logits"), dynamic batch, height and width.

    A binary model exports as its float emulation: sign activations become Where ops and the binary kernels
    (alpha * sign(W)) become constant float weights."""
    model = model.eval()
    if input_size is None:
        input_size = ARCHS[arch]["input"].size if arch else 32
    dummy = torch.zeros(1, 3, input_size, input_size)
    dyn = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": dyn, "logits": {0: "batch"}}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
