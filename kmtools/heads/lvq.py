"""LVQ heads on penultimate features: RSLVQ and GLVQ (prototype-layers paper, Sec. 6.1).

Both keep M labelled prototypes per class in feature space and compute the prototype
response vector ``d(f) = (‖f - w_1‖², …, ‖f - w_P‖²)`` with the dot-product form of
Eq. (10)-(12) (see :func:`kmtools.heads.rbf.squared_distances`).

* **RSLVQ** (Seo & Obermayer; paper Sec. 6.1, Eq. 19): a Gaussian mixture with one
  component of width σ per prototype. ``p(k | f) = softmax(-d(f) / (2σ²))_k`` and the class
  posterior is ``p̂_c(f) = Σ_{k: c_k = c} p(k | f)``. Its loss is the negative
  log-likelihood ratio ``-log p̂_y(f) = log Σ_k e^{-d_k/2σ²} - log Σ_{k: c_k = y} e^{-d_k/2σ²}``,
  which is the cross entropy on the class posterior (Sec. 7.5).
* **GLVQ** (Sato & Yamada; paper Sec. 6.1, Eq. 20): relative distance difference
  ``μ(f) = (d⁺ - d⁻) / (d⁺ + d⁻)`` with d⁺ (d⁻) the squared distance to the closest
  prototype of the correct (any incorrect) class; ``μ < 0`` iff ``f`` is classified
  correctly. Loss ``mean φ(μ)`` with a monotone squashing φ: identity or
  ``sigmoid(slope · μ)`` (Sec. 7.5, "Nonlinearities"). Prediction: nearest prototype
  (WTA rule, Eq. 3 and 5).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from kmtools.errors import ConfigError
from kmtools.heads.rbf import PrototypeHead

SQUASHINGS = ("identity", "sigmoid")


class RSLVQHead(PrototypeHead):
    """Robust soft LVQ head. ``forward(f)`` = class posteriors ``p̂(f)`` (N, c), rows sum
    to 1; ``confidences(scores) = scores``; ``decision_scores(f)`` =
    ``log Σ_{k∈c} exp(-d_k / 2σ²)`` (= ``log p̂_c`` + a per-row constant, smooth, same
    argmax as ``forward``)."""

    kind: ClassVar[str] = "rslvq"
    _config_keys: ClassVar[tuple[str, ...]] = ("sigma",)

    def __init__(
        self,
        prototypes: torch.Tensor,
        prototype_labels: torch.Tensor,
        num_classes: int | None = None,
        *,
        sigma: float = 1.0,
    ) -> None:
        super().__init__(prototypes, prototype_labels, num_classes)
        if not sigma > 0 or not math.isfinite(sigma):
            raise ConfigError(f"sigma must be a positive number, got {sigma}")
        self.sigma = float(sigma)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """``-d(f) / (2σ²)`` per prototype, (N, P)."""
        return -self.sq_dist(f) / (2.0 * self.sigma**2)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.class_sum(torch.softmax(self.logits(f), dim=-1))

    def confidences(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.clamp(0.0, 1.0)

    def decision_scores(self, f: torch.Tensor) -> torch.Tensor:
        return self.class_logsumexp(self.logits(f))

    def loss(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood ratio ``-log p̂_y(f)`` (computed with logsumexp)."""
        z = self.logits(f)
        y = y.reshape(-1).long()
        return (z.logsumexp(dim=-1) - self.class_logsumexp(z).gather(1, y[:, None]).squeeze(1)).mean()


def glvq_mu(class_dist: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``μ = (d⁺ - d⁻) / (d⁺ + d⁻)`` per sample from class-wise minimum squared distances
    ``class_dist`` (N, c) and labels ``y`` (N,). Values in [-1, 1]; negative iff the nearest
    prototype has the right class (Eq. 20)."""
    y = y.reshape(-1, 1).long()
    d_plus = class_dist.gather(1, y).squeeze(1)
    wrong = torch.ones_like(class_dist, dtype=torch.bool).scatter(1, y, False)
    inf = torch.full((), float("inf"), dtype=class_dist.dtype, device=class_dist.device)
    d_minus = torch.where(wrong, class_dist, inf).amin(dim=-1)
    return (d_plus - d_minus) / (d_plus + d_minus + eps)


def squash(mu: torch.Tensor, squashing: str = "identity", slope: float = 1.0) -> torch.Tensor:
    """Monotone squashing φ of the GLVQ loss: identity or ``sigmoid(slope · μ)``."""
    if squashing == "identity":
        return mu
    if squashing == "sigmoid":
        return torch.sigmoid(slope * mu)
    raise ConfigError(f"unknown squashing {squashing!r}: use one of {', '.join(SQUASHINGS)}")


class GLVQHead(PrototypeHead):
    """Generalised LVQ head.

    ``forward(f)`` = ``-min_{k: c_k = c} ‖f - w_k‖²`` per class (N, c): its argmax is the
    nearest prototype's class. ``decision_scores`` is the same (piecewise quadratic; smooth
    everywhere for one prototype per class, and a.e. otherwise).

    ``confidences(scores)``: for class c with distance ``d_c`` and the nearest *other*
    class at ``d_o``, ``conf_c = d_o / (d_c + d_o) = (1 - μ_c) / 2`` with
    ``μ_c = (d_c - d_o)/(d_c + d_o)`` the GLVQ relative distance difference. It lies in
    [0, 1], is > 0.5 exactly for the predicted class, 0.5 on the decision boundary and
    1 on a prototype. It is *relative*: a point far from every prototype gets ≈ 0.5, so
    use n-ball rejection (:mod:`kmtools.heads.reject`) to flag outliers.
    """

    kind: ClassVar[str] = "glvq"
    _config_keys: ClassVar[tuple[str, ...]] = ("squashing", "slope")

    def __init__(
        self,
        prototypes: torch.Tensor,
        prototype_labels: torch.Tensor,
        num_classes: int | None = None,
        *,
        squashing: str = "identity",
        slope: float = 1.0,
    ) -> None:
        super().__init__(prototypes, prototype_labels, num_classes)
        if squashing not in SQUASHINGS:
            raise ConfigError(f"unknown squashing {squashing!r}: use one of {', '.join(SQUASHINGS)}")
        if not slope > 0 or not math.isfinite(slope):
            raise ConfigError(f"slope must be a positive number, got {slope}")
        if self.num_classes < 2:
            raise ConfigError("GLVQ needs at least two classes")
        self.squashing = squashing
        self.slope = float(slope)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return -self.class_min(self.sq_dist(f))

    def decision_scores(self, f: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self(f)
        return out

    def confidences(self, scores: torch.Tensor) -> torch.Tensor:
        d = (-scores).clamp_min(0.0)
        two = torch.topk(d, 2, dim=-1, largest=False)
        first, second = two.values[:, :1], two.values[:, 1:2]
        idx = torch.arange(d.shape[1], device=d.device).unsqueeze(0)
        other = torch.where(idx == two.indices[:, :1], second, first)
        den = d + other
        safe = torch.where(den > 0, den, torch.ones_like(den))
        return torch.where(den > 0, other / safe, torch.full_like(den, 0.5))

    def mu(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """GLVQ relative distance difference μ(f) (N,), Eq. (20)."""
        return glvq_mu(self.class_min(self.sq_dist(f)), y)

    def loss(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``mean φ(μ(f))`` with the head's squashing φ (Eq. 20)."""
        return squash(self.mu(f, y), self.squashing, self.slope).mean()
