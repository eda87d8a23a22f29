"""Gradient checks of every BONN loss term and binarizer against the paper's closed forms (float64)."""

from __future__ import annotations

import pytest
import torch

from training.binarize import BinaryConv2d, BinaryWeight, SignSTE
from training.losses import (SIGMA_MIN, BayesianFeatureLoss, BayesianKernelLoss, bimodality, clamp_recon_)


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _pm1(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


def _kernel_setup(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(BinaryConv2d(3, 4, 3), BinaryConv2d(4, 5, 3))
    loss = BayesianKernelLoss(net, lam=0.3, nu=0.7)
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = 0.0  # sign(0) = +1 branch
        for layer, mu, sigma in zip(loss.layers, loss.mu, loss.sigma):
            layer.recon.uniform_(0.1, 0.5)
            mu.uniform_(0.1, 0.4)
            sigma.uniform_(0.2, 0.6)
    return net, loss


def _closed_form(layer, mu, sigma, lam, nu):
    """Paper Eqs. 13, 16, 17, 18 (X_hat = mean(w) sign(X) held constant)."""
    X = layer.weight.detach().flatten(1)
    w, mu, sg = layer.recon.detach(), mu.detach()[:, None], sigma.detach()[:, None]
    K = X.shape[1]
    s = _pm1(X)
    x_hat = w.mean() * s
    pos, neg = (X >= 0).double(), (X < 0).double()
    gX = lam * (w * (w * X - x_hat) + nu * pos * (X - mu) / sg ** 2 + nu * neg * (X + mu) / sg ** 2)
    gw = lam * ((w * X - x_hat) * X).sum(0)
    gmu = lam * nu / K * (pos * (mu - X) / sg ** 2 + neg * (mu + X) / sg ** 2).sum(1)
    gsg = lam * nu / K * (pos * (-(X - mu) ** 2 / sg ** 3 + 1 / sg)
                          + neg * (-(X + mu) ** 2 / sg ** 3 + 1 / sg)).sum(1)
    return gX.view_as(layer.weight), gw, gmu, gsg


def test_kernel_loss_gradients_match_paper_eqs_13_16_17_18():
    _, loss = _kernel_setup()
    loss().backward()
    for layer, mu, sigma in zip(loss.layers, loss.mu, loss.sigma):
        gX, gw, gmu, gsg = _closed_form(layer, mu, sigma, 0.3, 0.7)
        torch.testing.assert_close(layer.weight.grad, gX, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(layer.recon.grad, gw, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(mu.grad, gmu, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(sigma.grad, gsg, rtol=1e-10, atol=1e-14)


def test_kernel_loss_closed_form_weight_gradient_and_value():
    _, loss = _kernel_setup(1)
    for g, (layer, mu, sigma) in zip(loss.grad_wrt_weights(), zip(loss.layers, loss.mu, loss.sigma)):
        torch.testing.assert_close(g, _closed_form(layer, mu, sigma, 0.3, 0.7)[0], rtol=1e-10, atol=1e-14)
    # value(): the paper's sum form with log det Psi = K log sigma^2
    expect = 0.0
    for layer, mu, sigma in zip(loss.layers, loss.mu, loss.sigma):
        X, w = layer.weight.detach().flatten(1), layer.recon.detach()
        s = _pm1(X)
        prior = ((X - s * mu.detach()[:, None]) ** 2 / sigma.detach()[:, None] ** 2).sum()
        logdet = X.shape[1] * torch.log(sigma.detach() ** 2).sum()
        expect += float(((w.mean() * s - w * X) ** 2).sum() + 0.7 * (prior + logdet))
    assert loss.value() == pytest.approx(0.5 * 0.3 * expect, rel=1e-10)


def test_kernel_prior_initialised_from_latent_weights():
    torch.manual_seed(3)
    net = torch.nn.Sequential(BinaryConv2d(2, 3, 3))
    loss = BayesianKernelLoss(net)
    a = net[0].weight.detach().flatten(1).abs()
    torch.testing.assert_close(loss.mu[0].detach(), a.mean(1))
    torch.testing.assert_close(loss.sigma[0].detach(), ((a - a.mean(1, keepdim=True)) ** 2).mean(1).sqrt())
    assert loss.lam == 1e-4 and loss.nu == 1e-4
    # mu/sigma follow the weights' dtype (and device), not the default dtype (float64 in this module)
    f32 = BayesianKernelLoss(torch.nn.Sequential(BinaryConv2d(2, 3, 3)).float())
    assert all(q.dtype == torch.float32 for q in (*f32.mu, *f32.sigma))


def test_refit_prior_is_where_the_papers_mu_sigma_gradients_vanish():
    """`fit_prior_` (used by `prior_update: closed_form`) puts mu/sigma at the zero of Eqs. 17-18 for the
    current weights: the closed-form gradients there are 0, and away from it they are not."""
    net, loss = _kernel_setup(2)
    with torch.no_grad():
        net[0].weight.mul_(0.1)  # weights moved since the start: the old mu/sigma no longer fit
    before = [_closed_form(lay, mu, sg, 0.3, 0.7)[2:] for lay, mu, sg in zip(loss.layers, loss.mu, loss.sigma)]
    assert all(float(g.abs().max()) > 1e-3 for pair in before for g in pair)
    loss.fit_prior_()
    for layer, mu, sigma in zip(loss.layers, loss.mu, loss.sigma):
        _, _, gmu, gsg = _closed_form(layer, mu, sigma, 0.3, 0.7)
        torch.testing.assert_close(gmu, torch.zeros_like(gmu), rtol=0, atol=1e-12)
        torch.testing.assert_close(gsg, torch.zeros_like(gsg), rtol=0, atol=1e-12)
        a = layer.weight.detach().flatten(1).abs()
        torch.testing.assert_close(mu.detach(), a.mean(1))


def test_sigma_and_recon_clamps_keep_them_positive():
    net, loss = _kernel_setup()
    with torch.no_grad():
        loss.sigma[0].fill_(-1.0)
        net[0].recon.fill_(-0.2)
    loss.clamp_()
    clamp_recon_(net)
    assert float(loss.sigma[0].detach().min()) == SIGMA_MIN
    assert float(net[0].recon.detach().min()) > 0 and float(net[0].alpha.detach()) > 0
    feat = BayesianFeatureLoss(3, 4)
    with torch.no_grad():
        feat.sigma.fill_(-3.0)
    feat.clamp_()
    assert float(feat.sigma.detach().min()) == SIGMA_MIN


def test_feature_loss_gradients_match_closed_form():
    torch.manual_seed(0)
    M, D, B, theta = 4, 6, 9, 0.05
    loss = BayesianFeatureLoss(M, D, theta=theta)
    with torch.no_grad():
        loss.centers.normal_()
        loss.sigma.uniform_(0.5, 2.0)
    f = torch.randn(B, D, requires_grad=True)
    y = torch.tensor([0, 1, 1, 3, 3, 3, 0, 2, 1])
    value = loss(f, y)
    value.backward()
    c, sg = loss.centers[y], loss.sigma.detach()[y]
    d = f.detach() - c
    expect_value = 0.5 * theta / B * ((d ** 2).sum(1) + (d ** 2 / sg ** 2 + torch.log(sg ** 2)).sum(1)).sum()
    assert float(value.detach()) == pytest.approx(float(expect_value), rel=1e-12)
    torch.testing.assert_close(f.grad, theta / B * (d + d / sg ** 2))
    gsig = torch.zeros(M, D).index_add_(0, y, theta / B * (-(d ** 2) / sg ** 3 + 1 / sg))
    torch.testing.assert_close(loss.sigma.grad, gsig)
    assert loss.centers.grad is None  # centers are not learned by the optimizer


def test_center_update_follows_center_loss_rule():
    torch.manual_seed(1)
    M, D, alpha = 3, 5, 0.5
    loss = BayesianFeatureLoss(M, D, alpha=alpha)
    with torch.no_grad():
        loss.centers.normal_()
    before = loss.centers.clone()
    f = torch.randn(7, D)
    y = torch.tensor([0, 0, 2, 2, 2, 0, 2])  # class 1 absent: must not move
    loss.update_centers(f, y)
    for j in range(M):
        idx = (y == j).nonzero().flatten()
        delta = sum((before[j] - f[n] for n in idx), torch.zeros(D)) / (1 + len(idx))
        torch.testing.assert_close(loss.centers[j], before[j] - alpha * delta)
    torch.testing.assert_close(loss.centers[1], before[1])


def test_binary_weight_forward_and_asynchronous_gradients():
    torch.manual_seed(0)
    X = torch.randn(4, 3, 3, 3, requires_grad=True)
    w = torch.rand(27) * 3 + 0.1  # large enough that the clip 1{|w o X| <= 1} is active somewhere
    w.requires_grad_(True)
    with torch.no_grad():
        X[0, 0, 0, 0] = 0.0
    out = BinaryWeight.apply(X, w)
    torch.testing.assert_close(out, w.mean() * _pm1(X.detach()))
    g = torch.randn_like(out)
    out.backward(g)
    Xf, gf = X.detach().flatten(1), g.flatten(1)
    inside = ((w.detach() * Xf).abs() <= 1).double()
    assert 0 < inside.mean() < 1
    torch.testing.assert_close(X.grad, (gf * inside * w.detach()).view_as(X))   # Eq. 12/13 (L_S part)
    torch.testing.assert_close(w.grad, (gf * inside * Xf).sum(0))               # Eq. 15 (L_S part)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sign_ste_forward_and_clipped_backward(dtype):
    a = torch.tensor([-2.0, -1.0000001, -1.0, -0.3, 0.0, 0.7, 1.0, 1.0000002, 3.0], dtype=dtype,
                     requires_grad=True)
    out = SignSTE.apply(a)
    assert out.tolist() == [-1, -1, -1, -1, 1, 1, 1, 1, 1]
    g = torch.arange(1.0, 10.0, dtype=dtype)
    out.backward(g)
    expect = g * (a.detach().abs() <= 1).to(dtype)
    assert a.grad.tolist() == expect.tolist()


def test_bimodality_coefficient_separates_one_and_two_modes():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(200_000, generator=g)
    two = torch.cat([torch.randn(100_000, generator=g) * 0.1 + 1,
                     torch.randn(100_000, generator=g) * 0.1 - 1])
    assert bimodality(gauss)["bc"] == pytest.approx(1 / 3, abs=0.01)
    assert bimodality(two)["bc"] > 5 / 9
    assert bimodality(two)["kurtosis"] < -1.5
