"""Model definitions: the BONN block, WRN-22 for 32x32 CIFAR and a Bi-Real-style ResNet-18 for 224x224.

The same classes with ``binary=False`` are the full-precision baselines. Exporters in ``training.export``
walk these modules, so keep the attribute names (``stem``, ``stages``, ``head_bn``, ``fc``) stable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .binarize import BinaryActivation, BinaryConv2d


class BonnBlock(nn.Module):
    """x -> BN -> sign -> 3x3 binary conv (x alpha) -> PReLU -> + shortcut(x)   (paper Fig. 2).

    The shortcut is real-valued: identity, or a 1x1 conv + BN where the shape changes.
    With ``binary=False`` the sign is dropped and the conv is an ordinary zero-padded float conv.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, binary: bool = True):
        super().__init__()
        self.binary = binary
        self.bn = nn.BatchNorm2d(in_channels)
        if binary:
            self.sign = BinaryActivation()
            self.conv = BinaryConv2d(in_channels, out_channels, 3, stride, 1)
        else:
            self.sign = nn.Identity()
            self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.act = nn.PReLU(out_channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(self.sign(self.bn(x))))
        return y + (x if self.shortcut is None else self.shortcut(x))


def _stage(in_ch: int, out_ch: int, units: int, stride: int, binary: bool) -> nn.Sequential:
    blocks = [BonnBlock(in_ch, out_ch, stride, binary)]
    blocks += [BonnBlock(out_ch, out_ch, 1, binary) for _ in range(units - 1)]
    return nn.Sequential(*blocks)


class BonnNet(nn.Module):
    """Common skeleton: full-precision stem -> stages of BONN blocks -> BN/ReLU -> avgpool -> FC."""

    def __init__(self, stem: nn.Sequential, widths: tuple[int, ...], units_per_stage: int,
                 strides: tuple[int, ...], num_classes: int, binary: bool, dropout: float = 0.0):
        super().__init__()
        self.binary = binary
        self.stem = stem
        stages, in_ch = [], widths[0]
        for out_ch, stride in zip(widths[1:], strides):
            stages.append(_stage(in_ch, out_ch, units_per_stage, stride, binary))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.head_bn = nn.BatchNorm2d(in_ch)
        self.head_act = nn.ReLU(inplace=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_ch, num_classes)
        self.feature_dim = in_ch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature that feeds the classifier (where the Bayesian feature loss applies)."""
        x = self.stages(self.stem(x))
        return torch.flatten(self.pool(self.head_act(self.head_bn(x))), 1)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.fc(self.dropout(f)), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


def wrn22(widths: tuple[int, int, int, int] = (16, 16, 32, 64), num_classes: int = 10,
          binary: bool = True, dropout: float = 0.0) -> BonnNet:
    """WRN-22 for 32x32 input: 3 stages x 3 basic blocks x 2 convs = 18 BONN blocks (each conv has its own
    shortcut, Bi-Real style), a 3x3 float stem and a float classifier."""
    stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]))
    return BonnNet(stem, widths, 6, (1, 2, 2), num_classes, binary, dropout)


def resnet18(num_classes: int = 1000, binary: bool = True) -> BonnNet:
    """Bi-Real-style ResNet-18 for 224x224 input: 7x7/2 float stem + 3x3/2 max-pool, 4 stages x 4 BONN blocks."""
    stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=False),
                         nn.MaxPool2d(3, 2, 1))
    return BonnNet(stem, (64, 64, 128, 256, 512), 4, (1, 2, 2, 2), num_classes, binary)


@dataclass(frozen=True)
class InputSpec:
    """How raw images become the network input (stored in the .bonn header)."""

    size: int            # network input is size x size
    resize: int          # shorter side is resized to this before the center crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Per-channel statistics of the CIFAR-10 training set (uint8 scale / 255).
CIFAR10_INPUT = InputSpec(32, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
IMAGENET_INPUT = InputSpec(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

ARCHS = {
    "wrn22-16": dict(family="wrn22", widths=(16, 16, 32, 64), input=CIFAR10_INPUT),
    "wrn22-64": dict(family="wrn22", widths=(64, 64, 128, 256), input=CIFAR10_INPUT),
    "resnet18": dict(family="resnet18", widths=(64, 64, 128, 256, 512), input=IMAGENET_INPUT),
}


def build_model(arch: str, binary: bool = True, num_classes: int | None = None,
                dropout: float = 0.0) -> BonnNet:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    spec = ARCHS[arch]
    if spec["family"] == "wrn22":
        return wrn22(spec["widths"], num_classes or 10, binary, dropout)
    return resnet18(num_classes or 1000, binary)


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Randomise every parameter and BN statistic so tests exercise the fused transforms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 1.5 + 0.25)
                m.weight.mul_(torch.where(torch.rand(m.weight.shape, generator=g) < 0.1, -1.0, 1.0))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 - 0.1)
            elif isinstance(m, BinaryConv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.recon.copy_(torch.rand(m.recon.shape, generator=g) * 0.2 + 0.05)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model
