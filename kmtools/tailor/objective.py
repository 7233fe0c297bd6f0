"""The scale-free TailorNetwork objective, the exact warm start and the scale-free geometry.

Notation ("Softmax is k-means", Sec. 3-4): f = f(x) the penultimate features, C_k the class
centroids, κ_k = exp(-γ‖f - C_k‖²) (Eq. 4). See ``docs/tailor.md`` for the derivations.

**Scale.** Nearest-centroid decisions do not change when f and C are scaled together, but
γ‖f - C_y‖² does: with a fixed γ the loss is lowered by shrinking everything (issue 14). The
objective therefore works on normalised features f̂ = f / √s(f), where
s(f) = mean_i ‖f_i - f̄‖² is the total scatter of the batch (differentiable, s(αf) = α²s(f)),
and on centroids Ĉ in the same units. Every term is then invariant under f → αf: the loss
cannot be lowered by a uniform rescaling, and its gradient is orthogonal to f (Euler).

**Loss.** L = γ̂ mean_i ‖f̂_i - M_{y_i}‖² + λ · CE(log κ̂(x_i), y_i) with
log κ̂_k = -γ̂(‖f̂ - Ĉ_k‖² + ô_k): Algorithm 1's scatter around the class means M plus the
cross-entropy guard against collapse on the head's logits. Once the centroids are the class
means (ρ = 1) the scatter is the mean of -log κ_y; during the warm start the head keeps the
softmax's decisions while the scatter already pulls towards the class means.

**Warm start** (``init="equidistant"``). Theorem 1 on the augmented features [f, 1]: the
logits w_k·f + b_k equal -γ‖[f, 1] - Z_k‖² up to a term shared by all classes when
2γZ_k = [w_k, b_k] + v. Written in feature coordinates, C_k = (w_k + v)/(2γ) and the bias
coordinate becomes a per-class offset o_k ≥ 0. Any shared v gives the same predictions; kmtools
takes the one that centres the centroids on the class means, and γ so that the centroids
spread like the class means. Then softmax(log κ) equals the network's softmax on every input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kmtools.centroids import class_means
from kmtools.models.core import GaussHead

EPS = 1e-12


@dataclass
class HeadState:
    """A Gauss head in normalised units: centroids Ĉ (c, d), offsets ô (c,) ≥ 0, γ̂, and the
    class means M (c, d) the scatter term pulls towards (None: the centroids themselves)."""

    centroids: torch.Tensor
    offsets: torch.Tensor
    gamma: float
    means: torch.Tensor | None = None

    def to(self, device: torch.device) -> HeadState:
        m = None if self.means is None else self.means.to(device)
        return HeadState(self.centroids.to(device), self.offsets.to(device), self.gamma, m)

    def raw_head(self, scale: float) -> GaussHead:
        """The same head on raw features f = √scale · f̂ (what is exported)."""
        root = scale**0.5
        return GaussHead(self.centroids.float().cpu() * root, gamma=self.gamma / scale,
                         offsets=self.offsets.float().cpu() * scale)


def total_scatter(f: torch.Tensor) -> torch.Tensor:
    """s(f) = mean_i ‖f_i - f̄‖² (differentiable; s(αf) = α² s(f))."""
    return (f - f.mean(0, keepdim=True)).pow(2).sum(1).mean().clamp_min(EPS)


def normalise(f: torch.Tensor) -> torch.Tensor:
    """f̂ = f / √s(f): features in units of their own total scatter."""
    return f / total_scatter(f).sqrt()


def logits(fh: torch.Tensor, st: HeadState) -> torch.Tensor:
    """log κ̂ = -γ̂(‖f̂ - Ĉ_k‖² + ô_k), shape (n, c)."""
    d2 = (fh.unsqueeze(1) - st.centroids.to(fh.dtype).unsqueeze(0)).pow(2).sum(-1)
    return -st.gamma * (d2 + st.offsets.to(fh.dtype))


def loss(f: torch.Tensor, y: torch.Tensor, st: HeadState, ce_weight: float, scatter_weight: float = 1.0
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale-free Algorithm-1 loss on a batch; returns (loss, scatter, ce, logits)."""
    fh = normalise(f)
    lg = logits(fh, st)
    target = st.centroids if st.means is None else st.means
    scatter = st.gamma * (fh - target.to(fh.dtype)[y]).pow(2).sum(1).mean()
    ce = F.cross_entropy(lg, y)
    return scatter_weight * scatter + ce_weight * ce, scatter.detach(), ce.detach(), lg.detach()


def mean_pair_sq(c: torch.Tensor) -> float:
    """Mean squared distance over pairs of rows k ≠ l (the squared inter-centroid gap)."""
    k = len(c)
    if k < 2:
        return float("nan")
    d = torch.cdist(c.double(), c.double()).pow(2)
    return float(d.sum() / (k * (k - 1)))


def means_state(feats: torch.Tensor, labels: torch.Tensor, c: int, gamma: float | None = None
                ) -> tuple[HeadState, float]:
    """Class means as centroids, no offsets; γ̂ = 1 / E‖f̂ - Ĉ_y‖² unless given. Returns (state, s)."""
    s = float(total_scatter(feats.double()))
    fh = feats.double() / s**0.5
    mu = class_means(fh, labels, c)
    if gamma is None:
        within = float((fh - mu[labels]).pow(2).sum(1).mean())
        gamma = 1.0 / max(within, EPS)
    return HeadState(mu.float(), torch.zeros(c), float(gamma)), s


def warm_start(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor) -> tuple[HeadState, float]:
    """Theorem-1 centroids on [f, 1] (module docstring): an exact copy of the softmax head.

    Returns the state in normalised units (f̂ = f/√s with s the total scatter of ``feats``)
    and s. ``-γ̂(‖f̂ - Ĉ_k‖² + ô_k) = w_k·f + b_k - γ̂‖f̂‖² + const`` for every input.
    """
    c = head.out_features
    s = float(total_scatter(feats.double()))
    w = head.weight.detach().double().cpu() * s**0.5  # logits = ŵ_k·f̂ + b_k
    b = head.bias.detach().double().cpu() if head.bias is not None else torch.zeros(c, dtype=torch.float64)
    mu = class_means(feats.double() / s**0.5, labels, c)
    g_w, g_mu = mean_pair_sq(w), mean_pair_sq(mu)
    gamma = 0.5 * (g_w / g_mu) ** 0.5 if g_mu > EPS and g_w > EPS else 0.5
    cen = w / (2 * gamma)
    cen = cen + (mu.mean(0) - cen.mean(0))  # the shared gauge vector v: centre on the class means
    off = -b / gamma - cen.pow(2).sum(1)
    off = off - off.min()
    return HeadState(cen.float(), off.float(), float(gamma), mu.float()), s


def blend(warm: HeadState, target: HeadState, rho: float) -> HeadState:
    """(1-ρ)·warm + ρ·target for centroids and offsets (γ̂ of the warm start kept)."""
    if rho >= 1.0:
        return HeadState(target.centroids, target.offsets, warm.gamma)
    cen = (1 - rho) * warm.centroids + rho * target.centroids
    off = (1 - rho) * warm.offsets + rho * target.offsets
    return HeadState(cen, off, warm.gamma, target.centroids)


@dataclass
class Geometry:
    """Scale-free separation: within-class scatter / mean squared inter-centroid gap, and
    the median margin to the Voronoi boundary of the true class in units of the rms gap."""

    scatter_over_gap2: float
    median_margin_gap: float

    def to_dict(self) -> dict[str, float]:
        return {"scatter_over_gap2": self.scatter_over_gap2, "median_margin_gap": self.median_margin_gap}


def geometry(feats: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
             offsets: torch.Tensor | None = None) -> Geometry:
    """Scale-free figures of features under centroids (both in the same units).

    margin_i = min_{l≠y} (D_l - D_y) / (2‖C_y - C_l‖), D_k = ‖f - C_k‖² + o_k: the distance of
    f to the bisector between its true class and the nearest other (negative when misclassified).
    """
    f, cen = feats.double(), centroids.double().to(feats.device)
    off = torch.zeros(len(cen), dtype=torch.float64) if offsets is None else offsets.double()
    gap2 = mean_pair_sq(cen)
    d = torch.cdist(f, cen).pow(2) + off.to(f.device)
    dy = d.gather(1, labels[:, None])
    pair = torch.cdist(cen, cen)
    margin = (d - dy) / (2 * pair[labels].clamp_min(EPS))
    margin.scatter_(1, labels[:, None], float("inf"))
    within = float((f - cen[labels]).pow(2).sum(1).mean())
    med = float(margin.min(1).values.quantile(0.5)) / gap2**0.5 if gap2 == gap2 and gap2 > 0 else float("nan")
    return Geometry(within / gap2 if gap2 > 0 else float("nan"), med)
