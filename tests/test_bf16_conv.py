"""bfloat16 binary convolutions for training (`binary_conv_dtype: bfloat16`), checked against float32.

The +-1 operands are exact in bfloat16, so the forward pass is exact while the integer sums fit bfloat16's
8-bit mantissa (|s| <= 512 for an even fan-in) and within 2^-9 relative beyond; the backward pass rounds
the incoming gradient and the results to bfloat16 (bf16 mixed precision), so gradients agree to ~1 %.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.binarize import BinaryConv2d, set_binary_conv_dtype
from training.data import train_batches
from training.trainer import Trainer

from test_trainer import DATA, _one_step_grads, needs_mini, small_cfg


def _pair(cin: int, cout: int, stride: int, seed: int = 0) -> tuple[BinaryConv2d, BinaryConv2d]:
    torch.manual_seed(seed)
    ref = BinaryConv2d(cin, cout, 3, stride, 1)
    with torch.no_grad():  # a reconstruction vector with spread, so its full-vector gradient is non-trivial
        ref.recon.mul_(torch.rand_like(ref.recon) + 0.5)
    fast = BinaryConv2d(cin, cout, 3, stride, 1)
    fast.load_state_dict(ref.state_dict())
    assert set_binary_conv_dtype(fast, torch.bfloat16) == 1
    return ref, fast


def _run(layer: BinaryConv2d, x: torch.Tensor, g: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(g)
    return y.detach(), x.grad, layer.weight.grad, layer.recon.grad


def _integer_conv(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """The +-1 convolution's integer sums, exactly (float64), with the layers' one-padding."""
    return F.conv2d(F.pad(x.double(), (1, 1, 1, 1), value=1.0), weight.detach().double().sign(), stride=stride)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cin,cout,stride,batch,size,channels_last", [
    (20, 24, 1, 3, 9, False),    # channels not a multiple of anything, odd spatial size
    (56, 40, 2, 2, 11, True),    # stride 2, fan-in 504: the largest exact without cancellation
    (16, 16, 1, 4, 32, True),    # WRN-22-16 stage 1
])
def test_bf16_forward_is_exact_and_gradients_agree(cin, cout, stride, batch, size, channels_last):
    ref, fast = _pair(cin, cout, stride)
    torch.manual_seed(1)
    x = torch.randn(batch, cin, size, size).sign()  # +-1 input; the layer one-pads it
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        g = torch.randn_like(ref(x))
    yr, gxr, gXr, gwr = _run(ref, x, g)
    yf, gxf, gXf, gwf = _run(fast, x, g)
    assert yf.dtype == torch.float32 and gXf.dtype == torch.float32
    # The exact result is alpha * (integer sum). bf16 gives it bit for bit; float32 sums alpha * +-1 terms
    # and so carries rounding of its own (nonzero where the true sum is 0).
    exact = _integer_conv(x, ref.weight, stride).float() * ref.alpha.detach()
    torch.testing.assert_close(yf, exact, rtol=0, atol=0)
    torch.testing.assert_close(yr, exact, rtol=0, atol=1e-5 * float(exact.abs().max()))
    for fast_grad, ref_grad in ((gxf, gxr), (gXf, gXr), (gwf, gwr)):
        assert _rel(fast_grad, ref_grad) < 1e-2
        assert float(F.cosine_similarity(fast_grad.flatten(), ref_grad.flatten(), dim=0)) > 0.9999


def test_bf16_rounds_only_large_sums_and_only_by_bf16_precision():
    """Fan-in 96 * 9 = 864: a constant input and all-positive filters give sums of 864 (a multiple of 32,
    exact) and, after flipping a few weights, 862, 858, ...: 862 is not a bfloat16 value."""
    ref, fast = _pair(96, 8, 1)
    with torch.no_grad():
        ref.weight.abs_()
        ref.weight[1, 0, 0, 0] *= -1   # sum 862
        ref.weight[2, :3, 0, 0] *= -1  # sum 858
        fast.weight.copy_(ref.weight)
    x = torch.ones(1, 96, 3, 3)  # one-padded to 5 x 5: every tap is +1
    g = torch.ones(1, 8, 3, 3)
    yr, *_ = _run(ref, x, g)
    yf, *_ = _run(fast, x, g)
    sums = _integer_conv(x, ref.weight, 1)
    assert sums[0, :3, 1, 1].tolist() == [864, 862, 858]
    exact = sums.float() * ref.alpha.detach()
    assert not torch.equal(yf, exact)                            # rounded ...
    assert float(((yf - exact) / exact).abs().max()) <= 2.0 ** -8  # ... to bfloat16's precision only
    # float32 adds 864 terms alpha * +-1: within the textbook accumulation bound n * 2^-24 (5e-5); how close
    # depends on the CPU's kernel (below 1e-6 on the Intel AMX machine this was written on, 1.3e-5 on an AMD
    # EPYC one)
    assert float(((yr - exact) / exact).abs().max()) <= 864 * 2.0 ** -24


def test_eval_and_no_grad_always_use_float32():
    ref, fast = _pair(24, 24, 1)
    x = torch.ones(2, 24, 8, 8)
    x[:, :, ::3] = -1
    fast.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=0)
    fast.train()
    with torch.no_grad():  # e.g. a training-mode forward for BN statistics
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=0)


def test_dtype_choice_is_validated():
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        set_binary_conv_dtype(BinaryConv2d(4, 4), torch.float16)
    with pytest.raises(ValueError, match="binary_conv_dtype"):
        small_cfg(binary_conv_dtype="half")


@needs_mini
@pytest.mark.parametrize("compiled", [False, True])
def test_bf16_training_step_matches_float32(tmp_path, compiled):
    """A whole BONN step (kernel + feature loss) from the same weights: same losses, same gradient direction.
    Float32 eager is the reference; the compiled float32 step is itself only ~0.9 cosine-close to it (sign
    flips of near-zero activations, see test_trainer), so the compiled bf16 step is compared with it."""
    torch.set_num_threads(1)
    cfg = small_cfg(channels_last=True, limit_train=64, feature_fraction=1.0, lam=1e-4, compile=compiled)
    ref = Trainer(cfg, str(DATA), tmp_path / "f32")
    fast = Trainer({**cfg, "binary_conv_dtype": "bfloat16"}, str(DATA), tmp_path / "bf16")
    assert all(m.train_dtype == torch.bfloat16 for m in fast.model.modules() if isinstance(m, BinaryConv2d))
    fast.model.load_state_dict(ref.model.state_dict())
    xb, yb = next(iter(train_batches(ref.train, 32, 0, 0, 0, 1, 0)))
    mr, gr = _one_step_grads(ref, xb, yb)
    mf, gf = _one_step_grads(fast, xb, yb)
    assert gr.keys() == gf.keys() and len(gr) > 10
    for key in ("ce", "kernel", "feature"):
        assert mf[key] == pytest.approx(mr[key], rel=1e-3 if not compiled else 2e-2), key
    flat_r = torch.cat([g.flatten() for g in gr.values()])
    flat_f = torch.cat([gf[n].flatten() for n in gr])
    assert float(F.cosine_similarity(flat_r, flat_f, dim=0)) > (0.999 if not compiled else 0.9)
