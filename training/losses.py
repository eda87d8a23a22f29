"""BONN's Bayesian losses (Gu et al., ICCV 2019, Eqs. 9-18), written so autograd yields the paper's gradients.

Kernel loss, per binary layer l and output filter i (K elements per filter, s = sign(X) with sign(0)=+1):

    L_kernel = (lambda/2) sum_l sum_i { ||X_hat_i - w o X_i||^2 + nu sum_k (X_ik - s_ik mu_i)^2 / sigma_i^2
                                        + nu log det Psi_i }

The paper mixes reductions (method doc section 3): the gradient for X is the *sum* form (Eq. 13) while the
gradients for mu and sigma are *per-filter means* over the K elements (Eqs. 17-18). We evaluate the prior
twice: once summed with mu, sigma detached (gives dX) and once as a per-filter mean with X detached
(gives dmu, dsigma).
X_hat = mean(w) sign(X) is a constant inside the loss (Eqs. 13, 16).

Feature loss on the pooled feature f of each sample of class m (batch mean, Eq. 9 second part):

    L_feature = (theta/2) mean_n { ||f_n - c_m||^2 + sum_k [ (f_nk - c_mk)^2 / sigma_mk^2 + log sigma_mk^2 ] }

Centers c_m are buffers updated after the optimizer step with the center-loss rule (`update_centers`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .binarize import binary_layers

SIGMA_MIN = 1e-4  # floor for every sigma after an optimizer step (keeps the Gaussians proper)


def _signs(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(torch.sign(x) + 0.5)  # sign with sign(0) = +1, as the binarizer


class BayesianKernelLoss(nn.Module):
    """Per-output-filter prior mean mu and std sigma for every binary conv of ``model``.

    Initialised from the latent weights (paper Alg. 1 line 1): mu_i = mean|X_i|, sigma_i = std of |X_i|."""

    def __init__(self, model: nn.Module, lam: float = 1e-4, nu: float = 1e-4):
        super().__init__()
        self.lam, self.nu = float(lam), float(nu)
        self.layers = binary_layers(model)
        # one entry per output filter, on the weights' device and dtype (a GPU model gets GPU mu/sigma)
        self.mu = nn.ParameterList([nn.Parameter(lay.weight.new_empty(lay.weight.shape[0])) for lay in self.layers])
        self.sigma = nn.ParameterList([nn.Parameter(lay.weight.new_empty(lay.weight.shape[0]))
                                       for lay in self.layers])
        self.fit_prior_()

    @torch.no_grad()
    def fit_prior_(self) -> None:
        """Set mu_i = mean|X_i| and sigma_i = std of |X_i| around it: the start (Alg. 1 line 1), and the point
        where the paper's mu/sigma gradients (Eqs. 17-18) vanish (`prior_update: closed_form` refits every step)."""
        for layer, mu, sigma in zip(self.layers, self.mu, self.sigma):
            a = layer.weight.detach().flatten(1).abs()
            mu.copy_(a.mean(1))
            sigma.copy_(a.std(1, unbiased=False).clamp_min(SIGMA_MIN))

    def forward(self) -> torch.Tensor:
        """The loss whose autograd gradients are the paper's (mixed reductions); see module docstring."""
        total = torch.zeros((), device=self.mu[0].device)
        for layer, mu, sigma in zip(self.layers, self.mu, self.sigma):
            X = layer.weight.flatten(1)                      # (Co, K)
            w = layer.recon                                  # (K,)
            with torch.no_grad():
                s = _signs(X)
                x_hat = w.mean() * s
            recon = (x_hat - w * X).square().sum()
            inv_var = sigma.detach().reciprocal().square()[:, None]
            prior_x = ((X - s * mu.detach()[:, None]).square() * inv_var).sum()
            Xd = X.detach()
            var = sigma.square()[:, None]
            prior_ms = ((Xd - s * mu[:, None]).square() / var + torch.log(var)).mean(1).sum()
            total = total + recon + self.nu * (prior_x + prior_ms)
        return 0.5 * self.lam * total

    @torch.no_grad()
    def value(self) -> float:
        """The paper's L_kernel (sum form, log det Psi = K log sigma^2), for logging."""
        total = 0.0
        for layer, mu, sigma in zip(self.layers, self.mu, self.sigma):
            X, w = layer.weight.flatten(1), layer.recon
            s = _signs(X)
            var = sigma.square()[:, None]
            total += float(((w.mean() * s - w * X).square().sum()
                            + self.nu * ((X - s * mu[:, None]).square() / var + torch.log(var)).sum()))
        return 0.5 * self.lam * total

    @torch.no_grad()
    def grad_wrt_weights(self) -> list[torch.Tensor]:
        """Closed-form dL_kernel/dX per layer (paper Eq. 13), used to split logged gradient norms."""
        out = []
        for layer, mu, sigma in zip(self.layers, self.mu, self.sigma):
            X, w = layer.weight.flatten(1), layer.recon
            s = _signs(X)
            g = w * (w * X - w.mean() * s) + self.nu * (X - s * mu[:, None]) / sigma.square()[:, None]
            out.append((self.lam * g).view_as(layer.weight))
        return out

    @torch.no_grad()
    def clamp_(self) -> None:
        for sigma in self.sigma:
            sigma.clamp_(min=SIGMA_MIN)


class BayesianFeatureLoss(nn.Module):
    """Per-class centers c_m (buffers) and standard deviations sigma_m (parameters) of the pooled feature."""

    def __init__(self, num_classes: int, dim: int, theta: float = 1e-2, alpha: float = 0.5):
        super().__init__()
        self.theta, self.alpha = float(theta), float(alpha)
        self.register_buffer("centers", torch.zeros(num_classes, dim))
        self.sigma = nn.Parameter(torch.ones(num_classes, dim))

    def forward(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.centers[y]
        var = self.sigma[y].square()
        d2 = (f - c).square()
        per_sample = d2.sum(1) + (d2 / var + torch.log(var)).sum(1)
        return 0.5 * self.theta * per_sample.mean()

    @torch.no_grad()
    def center_deltas(self, f: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class sum of (c_j - f_n) and count over this batch (all-reduced across ranks under DDP)."""
        m = self.centers.shape[0]
        diff = torch.zeros_like(self.centers).index_add_(0, y, self.centers[y] - f.detach())
        ones = torch.ones_like(y, dtype=self.centers.dtype)
        count = torch.zeros(m, dtype=self.centers.dtype, device=self.centers.device).index_add_(0, y, ones)
        return diff, count

    @torch.no_grad()
    def apply_center_update(self, diff: torch.Tensor, count: torch.Tensor) -> None:
        """Center-loss rule (Wen et al. 2016): c_j <- c_j - alpha * sum_{y_n=j}(c_j - f_n) / (1 + n_j)."""
        self.centers.sub_(self.alpha * diff / (1.0 + count)[:, None])

    def update_centers(self, f: torch.Tensor, y: torch.Tensor) -> None:
        self.apply_center_update(*self.center_deltas(f, y))

    @torch.no_grad()
    def clamp_(self) -> None:
        self.sigma.clamp_(min=SIGMA_MIN)


@torch.no_grad()
def clamp_recon_(model: nn.Module, floor: float = 1e-4) -> None:
    """Keep every element of each reconstruction vector w positive (so mean(w) > 0 and the STE gradient
    g o w never flips sign)."""
    for layer in binary_layers(model):
        layer.recon.clamp_(min=floor)


@torch.no_grad()
def bimodality(x: torch.Tensor) -> dict[str, float]:
    """Sarle's bimodality coefficient BC = (skew^2 + 1) / (excess kurtosis + 3(n-1)^2/((n-2)(n-3))).

    BC of a Gaussian is 1/3; BC > 5/9 suggests two modes. Also the excess kurtosis (negative for two
    separated symmetric modes, since their skew is ~0) and the fraction of |x| within one std of mean|x|."""
    x = x.detach().flatten().double()
    n = x.numel()
    m = x.mean()
    d = x - m
    var = d.square().mean()
    skew = float(d.pow(3).mean() / var.pow(1.5))
    kurt = float(d.pow(4).mean() / var.square()) - 3.0
    bc = (skew ** 2 + 1) / (kurt + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
    a = x.abs()
    near = float(((a - a.mean()).abs() <= a.std()).double().mean())
    return {"bc": bc, "kurtosis": kurt, "near_mode": near}
