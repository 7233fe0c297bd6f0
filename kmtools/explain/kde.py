"""Gaussian kernel density estimate with conditional sampling (Supplement Appendix G).

Reference: Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks",
Appendix G: p(x) = (1/N) Σ_n N(x | x_n, σ² I) (Eq. 39), σ by maximum leave-one-out
likelihood (Eqs. 40–42), and the conditional p(x_F | x_P) used to impute missing features
(Eqs. 43–44). Used by the feature-adding AUC (:mod:`.evaluate`) and by PDA with
conditional sampling (:mod:`.baselines`); it lives here so neither imports the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kmtools.errors import ConfigError
from kmtools.explain._threads import small_work

__all__ = ["KDE", "loo_sigma"]


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)
    return d.clamp_min(0.0)


@small_work
def loo_sigma(data: torch.Tensor, *, iters: int = 1000, tol: float = 1e-10) -> float:
    """σ of the KDE (Eq. 39) by maximum leave-one-out likelihood (Eqs. 40–42).

    Fixed-point iteration of Eq. 42:
    σ² ← (1/(N d)) Σ_n Σ_{n'≠n} softmax_{n'}(−‖x_n − x_n'‖² / (2σ²_old)) ‖x_n − x_n'‖²,
    started from the mean nearest-neighbour distance, until the relative change is below ``tol``.
    """
    x = data.detach().to(torch.float64).reshape(data.shape[0], -1)
    n, d = x.shape
    if n < 2:
        raise ConfigError("the KDE needs at least 2 data points")
    dist = _sqdist(x, x)
    dist.fill_diagonal_(float("inf"))
    nn = dist.min(1).values
    s2 = float(nn[torch.isfinite(nn)].mean()) / d
    floor = 1e-12 * max(float(dist[torch.isfinite(dist)].mean()) / d, 1e-300)
    s2 = max(s2, floor)
    finite = torch.isfinite(dist)
    dz = torch.where(finite, dist, torch.zeros_like(dist))
    for _ in range(iters):
        w = torch.softmax(-dist / (2.0 * s2), dim=1)  # inf on the diagonal → weight 0 (leave-one-out)
        new = max(float((w * dz).sum()) / (n * d), floor)
        if abs(new - s2) <= tol * s2:
            s2 = new
            break
        s2 = new
    return math.sqrt(s2)


@dataclass
class KDE:
    """Gaussian KDE p(x) = (1/N) Σ_n N(x | x_n, σ² I) (Eq. 39) with conditional sampling (Eqs. 43–44)."""

    data: torch.Tensor
    sigma: float

    @classmethod
    def fit(cls, data: torch.Tensor, sigma: float | None = None) -> KDE:
        x = data.detach().to(torch.float64).reshape(data.shape[0], -1)
        return cls(x, float(sigma) if sigma is not None else loo_sigma(x))

    def sample_conditional(
        self, z: torch.Tensor, present: torch.Tensor, samples: int, gen: torch.Generator
    ) -> torch.Tensor:
        """Draw ``samples`` points from p(x_F | z_P) (Eq. 43) for each row of ``z``: (B, S, d).

        ``present`` (d,) bool marks P; the other features F are drawn by picking n with
        probability α_n ∝ exp(−‖z_P − [x_n]_P‖² / (2σ²)) (Eq. 44), then x_F ~ N([x_n]_F, σ² I).
        """
        zw = z.detach().to(torch.float64).cpu()
        data = self.data.cpu()
        p = present.cpu().bool()
        logits = -_sqdist(zw[:, p], data[:, p]) / (2.0 * self.sigma**2)  # (B, N)
        idx = _gumbel_pick(logits.unsqueeze(1).expand(-1, samples, -1), gen)  # (B, S)
        noise = torch.randn(*idx.shape, data.shape[1], generator=gen, dtype=torch.float64)
        drawn = data[idx] + self.sigma * noise
        out = torch.where(p, zw[:, None, :], drawn)
        return out.to(z.device, z.dtype)


def _gumbel_pick(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One categorical draw per row of softmax(logits) along the last axis (Gumbel-max)."""
    u = torch.rand(logits.shape, generator=gen, dtype=torch.float64).clamp_(1e-300, 1.0)
    return (logits - torch.log(-torch.log(u))).argmax(-1)
