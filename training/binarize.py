"""Binarizers with straight-through gradients, as BONN uses them.

Decisions (see docs/method.md):
- sign(0) = +1, so every value maps to exactly one bit (bit 1 = negative). The engine packs the same way.
- Binary convolutions pad their (already binarized) input with +1, not 0 ("one-padding"): padded taps
  cost nothing when packed and the engine reproduces them bit for bit.
- Training may run the binary convolutions in bfloat16 (`binary_conv_dtype`): both operands are exactly +-1,
  so only the integer sums' rounding and the incoming gradient's rounding differ from float32
  (docs/method.md section 13). Evaluation and export always use float32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1; values are exactly +-1."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def _sign_pm1_fast(x: torch.Tensor) -> torch.Tensor:
    """Same values as sign_pm1 (sign(0) = +1), ~3x faster on CPU: sign(x) + 0.5 is never 0."""
    return torch.sign(torch.sign(x).add_(0.5))


# Smallest float32 above 1: hardtanh_backward keeps the gradient for min < a < max (strict), so these bounds
# give exactly the inclusive clip 1{|a| <= 1} in float32, with one fused kernel instead of abs/compare/mul.
_ONE_UP = float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)))


class SignSTE(torch.autograd.Function):
    """Forward: sign_pm1(a). Backward: clipped straight-through estimator, g * 1{|a| <= 1}."""

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(a)
        return _sign_pm1_fast(a)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (a,) = ctx.saved_tensors
        if a.dtype != torch.float32:
            return g * (a.abs() <= 1).to(g.dtype)
        return torch.ops.aten.hardtanh_backward(g, a, -_ONE_UP, _ONE_UP)


class BinaryWeight(torch.autograd.Function):
    """BONN kernel binarization X_hat = mean(w) * sign(X) with the paper's asynchronous gradients.

    X: latent weights (Co, Ci, kh, kw); w: reconstruction vector with one entry per element of a filter
    (Ci*kh*kw), shared by every filter of the layer. The forward pass uses the scalar mean of w; the backward
    pass uses the full vector (paper Eqs. 11-16):
        dL/dX_i = g_i * 1{|w o X_i| <= 1} * w
        dL/dw   = sum_i g_i * 1{|w o X_i| <= 1} * X_i
    """

    @staticmethod
    def forward(ctx, X: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(X, w)
        return w.mean() * sign_pm1(X)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        X, w = ctx.saved_tensors
        Xf = X.reshape(X.shape[0], -1)
        gf = g.reshape(X.shape[0], -1)
        inside = ((w * Xf).abs() <= 1).to(g.dtype)
        gX = (gf * inside * w).reshape_as(X)
        gw = (gf * inside * Xf).sum(dim=0)
        return gX, gw


class BinaryConvBF16(torch.autograd.Function):
    """y = alpha * conv(x, sign(W_hat)) with both +-1 operands in bfloat16; y and the gradients in float32.

    Why: with AMX/AVX512-BF16 a bfloat16 convolution is 3-8x faster than float32 on the CPU, and +-1 is
    exact in bfloat16. The products are exact and oneDNN accumulates in float32; the result is rounded to
    bfloat16 on output, which is exact for sums with |s| <= 256 (or <= 512 when the fan-in is even, as every
    3x3 fan-in is) and within 2^-9 relative beyond. The scale alpha stays float32. Backward: the incoming
    gradient is rounded to bfloat16 (as in bf16 mixed precision); the gradient w.r.t. W_hat is the plain
    weight gradient, so BinaryWeight's asynchronous rule (Eqs. 11-16) still applies on top of it.
    x: +-1 input, already padded; W_hat = alpha * sign(X) from BinaryWeight; alpha: detached float32 scalar.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_hat: torch.Tensor, alpha: torch.Tensor,  # type: ignore[override]
                stride: int) -> torch.Tensor:
        xb = x.to(torch.bfloat16)
        sb = torch.sign(w_hat).to(torch.bfloat16)  # alpha > 0 (clamped), so sign(W_hat) = sign(X)
        ctx.save_for_backward(xb, sb, alpha)
        ctx.stride = stride
        return F.conv2d(xb, sb, stride=stride).float() * alpha

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        xb, sb, alpha = ctx.saved_tensors
        gx, gw, _ = torch.ops.aten.convolution_backward(
            g.to(torch.bfloat16), xb, sb, None, [ctx.stride] * 2, [0, 0], [1, 1], False, [0, 0], 1,
            [ctx.needs_input_grad[0], True, False])
        # d/dx of alpha * conv(x, S) is alpha * dgrad; d/dW_hat of conv(x, W_hat) is the plain wgrad.
        return (gx.float() * alpha if gx is not None else None), gw.float(), None, None


class BinaryActivation(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        # Without autograd (eval, ONNX export) use the plain op, which exports as a Where node.
        return SignSTE.apply(a) if a.requires_grad else sign_pm1(a)


class BinaryConv2d(nn.Module):
    """3x3 (or kxk) binary convolution scaled by one learned positive scalar per layer (mean of `recon`).

    The input must already be +-1. Padding uses the value +1 (one-padding).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        # Reconstruction vector w (paper Eq. 1); one entry per filter element. Initialised to the mean |X|
        # so the first forward pass has an XNOR-like scale (decision, docs/method.md).
        k = in_channels * kernel_size * kernel_size
        self.recon = nn.Parameter(torch.full((k,), float(self.weight.detach().abs().mean())))
        # Arithmetic of the training forward/backward (float32 or bfloat16); not saved in the state_dict.
        self.train_dtype = torch.float32

    @property
    def alpha(self) -> torch.Tensor:
        """The forward scale: mean of the reconstruction vector."""
        return self.recon.mean()

    def binary_weight(self) -> torch.Tensor:
        return BinaryWeight.apply(self.weight, self.recon)

    def forward(self, x_sign: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if p:
            x_sign = F.pad(x_sign, (p, p, p, p), value=1.0)
        if self.train_dtype == torch.bfloat16 and self.training and torch.is_grad_enabled():
            return BinaryConvBF16.apply(x_sign, self.binary_weight(), self.alpha.detach(), self.stride)
        return F.conv2d(x_sign, self.binary_weight(), stride=self.stride)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding} (+1)")


def binary_layers(model: nn.Module) -> list[BinaryConv2d]:
    return [m for m in model.modules() if isinstance(m, BinaryConv2d)]


@torch.no_grad()
def scale_latent_init(model: nn.Module, scale: float) -> None:
    """Multiply every binary layer's freshly initialised latent weights by `scale` (their signs, and so the
    forward pass up to BN, do not change) and re-initialise `recon` to the new mean |X| as the layer does.
    The scale decides how far an SGD step moves a latent weight relative to its size (method section 19)."""
    for m in binary_layers(model):
        m.weight.mul_(scale)
        m.recon.fill_(float(m.weight.abs().mean()))


@torch.no_grad()
def latent_signs(model: nn.Module) -> list[torch.Tensor]:
    """Every binary layer's latent signs (True where the binarized weight is +1), as the forward sees them."""
    return [(m.weight >= 0).cpu() for m in binary_layers(model)]


def changed_fraction(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """Fraction of all latent signs that differ between two `latent_signs` snapshots of one net."""
    if [b.shape for b in before] != [a.shape for a in after]:
        raise ValueError("the snapshots are of different nets")
    total = sum(b.numel() for b in before)
    return sum(int((b != a).sum()) for b, a in zip(before, after)) / max(total, 1)


def set_binary_conv_dtype(model: nn.Module, dtype: torch.dtype) -> int:
    """Run every binary convolution of `model` in `dtype` while training; returns how many it set."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"binary convolutions run in float32 or bfloat16, not {dtype}")
    layers = binary_layers(model)
    for m in layers:
        m.train_dtype = dtype
    return len(layers)
