"""Kernel k-means: the fit of Appendix F and its neuralization (Sec. III, Prop. 5).

Reference: Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks",
Section III and Supplement Appendices C, D, F.

Each cluster k is represented by M support vectors u_j, j ∈ C_k. The decision (Eq. 6) is

    assign x to c  iff  LME^{−γ}_{i∈C_c} ‖x − u_i‖² < LME^{−γ}_{j∈C_k} ‖x − u_j‖²  ∀k ≠ c,

with the generalised mean LME^{γ}_{i∈C}{s_i} = (1/γ) log( (1/|C|) Σ_i exp(γ s_i) ) (Eq. 7;
LME^{−γ} is a soft minimum). Proposition 5 writes it as a four-layer network::

    h_ijk = w_ijᵀx + b_ij,  w_ij = 2(u_i − u_j),  b_ij = ‖u_j‖² − ‖u_i‖²   (layer 1, i ∈ C_c, j ∈ C_k)
    h_jk  = LME^{γ}_{i∈C_c} h_ijk                                          (layer 2, soft max-pool)
    h_k   = LME^{−γ}_{j∈C_k} h_jk                                          (layer 3, soft min-pool)
    f_c   = min_{k≠c} h_k                                                  (layer 4)

Propagation (Sec. III and footnote 1): min-take-most with stiffness β on layer 4 (Eq. 2),
R_ijk = softmax_i(γ h_ijk) · softmax_j(−γ h_jk) · R_k on layers 3–2, the reassignment
R_ijk ← R_ijk · h_ijk / h_k (Eq. 10) that lets relevance on weakly activated neurons fade,
and the midpoint rule (Eq. 4) on layer 1 with m_ij = (u_i + u_j)/2. Since h_ijk = d_j − d_i
(d = squared distance) the softmax over i is softmax_i(−γ d_i), independent of j and k, and
the whole backward pass collapses to

    R = Σ_{k≠c} (R_k / h_k) · ( E_{s_k}[(x − u_j)²] − E_{p}[(x − u_i)²] )     (element-wise)

with p = softmax_{i∈C_c}(−γ d_i) and s_k = softmax_{j∈C_k}(−γ h_jk) = softmax_j(−γ d_j).
Conservation is approximate: layer 2 hands on E_p[h_ijk] ≥ LME^{γ}_i h_ijk and layer 3
E_s[h_jk] ≤ LME^{−γ}_j h_jk (Gibbs' inequality), and Eq. 10 rescales by h_ijk / h_k, so
Σ_i R_i = Σ_k (R_k / h_k) E_{p,s}[h_ijk] ≈ f_c, on either side of it (exact for M = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kmtools.errors import ConfigError
from kmtools.explain._threads import small_work
from kmtools.explain.neon import min_take_most

__all__ = ["KernelKMeans", "fit_kernel_kmeans", "kernel_neon", "lme"]


def lme(s: torch.Tensor, gamma: float, dim: int = -1) -> torch.Tensor:
    """Eq. 7: LME^{γ}{s} = (1/γ) log mean exp(γ s) along ``dim`` (γ < 0: soft minimum)."""
    n = s.shape[dim]
    return (torch.logsumexp(gamma * s, dim=dim) - math.log(n)) / gamma


@dataclass
class KernelKMeans:
    """A fitted kernel k-means model (Appendix F) as a :class:`~kmtools.explain.neon.ClusterModel`.

    ``support`` (K, M, d): M support vectors per cluster; ``gamma``: the kernel scale of
    K(x, u) = exp(−γ‖x − u‖²); ``objective``: the value of Eq. 36 at the fit.
    """

    support: torch.Tensor
    gamma: float
    objective: float = float("nan")

    @property
    def num_clusters(self) -> int:
        return int(self.support.shape[0])

    def _sqdist(self, x: torch.Tensor) -> torch.Tensor:
        """d_j = ‖x − u_j‖² (N, K, M) in float64."""
        u = self.support.to(x.device, torch.float64)
        xw = x.to(torch.float64)
        k, m, d = u.shape
        flat = u.reshape(k * m, d)
        sq = (xw * xw).sum(1, keepdim=True) - 2.0 * xw @ flat.T + (flat * flat).sum(1)
        return sq.clamp_min(0.0).reshape(-1, k, m)

    def cluster_distances(self, x: torch.Tensor) -> torch.Tensor:
        """LME^{−γ}_{j∈C_k} ‖x − u_j‖² for every cluster (N, K): the distances of Eq. 6."""
        return lme(self._sqdist(x), -self.gamma, dim=2)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 6: the cluster with the smallest soft-min distance (N,)."""
        return self.cluster_distances(x).argmin(1)

    def hidden(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Layer 3 of Prop. 5: h_k = LME^{−γ}_j d_j − LME^{−γ}_i d_i (N, K), +inf at k = c."""
        dist = self.cluster_distances(x)
        h = dist - dist.gather(1, c.view(-1, 1))
        return h.scatter(1, c.view(-1, 1), float("inf"))

    def score(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """f_c(x) = min_{k≠c} h_k(x) (Prop. 5, layer 4), differentiable, in x's dtype."""
        u = self.support.to(x.device, x.dtype)
        k, m, d = u.shape
        diff = x[:, None, :] - u.reshape(1, k * m, d)
        dist = lme((diff * diff).sum(-1).reshape(-1, k, m), -self.gamma, dim=2)
        c = torch.as_tensor(c, device=x.device).long().view(-1, 1)
        h = (dist - dist.gather(1, c)).scatter(1, c, float("inf"))
        return h.min(1).values

    def stiffness(self, x: torch.Tensor) -> float:
        """Eq. 3 for the kernel model: β = 1 / E[f_c] over ``x``."""
        f = self.hidden(x, self.predict(x)).min(1).values
        m = float(f.mean())
        if not m > 0:
            raise ConfigError(f"E[f_c] = {m:.3g} ≤ 0 for this kernel k-means model: pass beta explicitly")
        return 1.0 / m

    def neon(self, x: torch.Tensor, c: torch.Tensor, beta: float | None = None) -> torch.Tensor:
        return kernel_neon(x, self, c, beta)


def kernel_neon(
    x: torch.Tensor,
    model: KernelKMeans,
    assignments: torch.Tensor | None = None,
    beta: float | None = None,
    *,
    eps: float = 1e-12,
) -> torch.Tensor:
    """NEON relevance for kernel k-means (Sec. III), shape (N, d), in x's dtype.

    ``beta`` defaults to 1 / E[f_c] over ``x`` (Eq. 3); the pooling layers use the model's γ
    (footnote 1). See the module docstring for the closed form of the backward pass.
    """
    if x.dim() != 2 or x.shape[1] != model.support.shape[2]:
        raise ConfigError(f"inputs must be (N, {model.support.shape[2]})")
    c = model.predict(x) if assignments is None else torch.as_tensor(assignments, device=x.device).long()
    if beta is None:
        beta = model.stiffness(x)
    xw = x.to(torch.float64)
    u = model.support.to(x.device, torch.float64)  # (K, M, d)
    g = float(model.gamma)
    d2 = model._sqdist(x)  # (N, K, M)
    dist = lme(d2, -g, dim=2)  # (N, K)
    h = (dist - dist.gather(1, c.view(-1, 1))).scatter(1, c.view(-1, 1), float("inf"))
    rk = min_take_most(h, float(beta), h.min(1).values)  # Eq. 2 on layer 4
    a = rk / (h.masked_fill(~torch.isfinite(h), 1.0) + eps)  # R_k / h_k (Eq. 10), 0 at k = c
    w = torch.softmax(-g * d2, dim=2)  # (N, K, M): p for k = c, s_k for competitors
    # E_w[(x − u)²] per cluster, element-wise: x² − 2x E_w[u] + E_w[u²]
    eu = torch.einsum("nkm,kmd->nkd", w, u)
    eu2 = torch.einsum("nkm,kmd->nkd", w, u * u)
    esq = xw[:, None, :] ** 2 - 2.0 * xw[:, None, :] * eu + eu2  # (N, K, d)
    own = esq[torch.arange(x.shape[0], device=x.device), c]  # E_p[(x − u_i)²]
    r = torch.einsum("nk,nkd->nd", a, esq) - a.sum(1, keepdim=True) * own
    return r.to(x.dtype)


def _objective(d2: torch.Tensor, labels: torch.Tensor, gamma: float) -> float:
    """Eq. 36: Σ_n γ LME^{−γ}_{j∈C_{k(n)}} ‖x_n − u_j‖² − (N d / 2) log γ (d2 is N, K, M)."""
    n = d2.shape[0]
    own = d2[torch.arange(n, device=d2.device), labels]  # (N, M)
    term = gamma * lme(own, -gamma, dim=1)
    return float(term.sum())


def _lloyd(x: torch.Tensor, k: int, gen: torch.Generator, iters: int = 50) -> torch.Tensor:
    """k-means++ seeding and Lloyd iterations: initial hard labels for Appendix F's EM."""
    n = x.shape[0]
    idx = [int(torch.randint(n, (1,), generator=gen))]
    d2 = ((x - x[idx[0]]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        j = int(torch.multinomial(p, 1, generator=gen))
        idx.append(j)
        d2 = torch.minimum(d2, ((x - x[j]) ** 2).sum(1))
    mu = x[idx].clone()
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        labels = torch.cdist(x, mu).argmin(1)
        for j in range(k):
            sel = labels == j
            if sel.any():
                mu[j] = x[sel].mean(0)
    return labels


@small_work
def fit_kernel_kmeans(
    x: torch.Tensor,
    k: int,
    m: int = 10,
    *,
    iters: int = 100,
    restarts: int = 10,
    noise: float = 1e-3,
    eps: float = 1e-9,
    init_labels: torch.Tensor | None = None,
    seed: int = 0,
) -> KernelKMeans:
    """Fit kernel k-means with M support vectors per cluster by the EM procedure of Appendix F.

    Model: cluster k is an equal-weight mixture of M isotropic Gaussians with shared scale γ
    (Eq. 34). E-step: hard assignment δ_nk to the cluster of largest likelihood, i.e. smallest
    LME^{−γ}_{j∈C_k} ‖x_n − u_j‖². M-step: u_j ← Σ_n K_nj x_n / Σ_n K_nj (Eq. 37) and
    γ ← (2/(Nd) Σ_n Σ_j K_nj ‖x_n − u_j‖² + ε)⁻¹ (Eq. 38, ε = 1e−9), with K_nj = δ_nk ·
    softmax_{j∈C_k}(−γ‖x_n − u_j‖²). A little Gaussian noise (``noise`` × the data scale) is
    added to the support vectors before each E-step; ``iters`` = 100 iterations; the best of
    ``restarts`` = 10 runs by Eq. 36 is kept (all as in App. F).

    ``init_labels`` (N,) starts every restart from these labels (the paper starts the
    newsgroups model from the ground truth); otherwise each restart starts from k-means++/Lloyd.
    """
    if x.dim() != 2:
        raise ConfigError("kernel k-means needs an (N, d) tensor")
    if k < 2 or k > x.shape[0]:
        raise ConfigError(f"k must be in [2, {x.shape[0]}], got {k}")
    if m < 1:
        raise ConfigError("m (support vectors per cluster) must be ≥ 1")
    xw = x.detach().to(torch.float64).cpu()
    n, d = xw.shape
    gen = torch.Generator().manual_seed(seed)
    scale = float(xw.std()) or 1.0
    best: KernelKMeans | None = None
    for _ in range(max(1, restarts)):
        labels = _lloyd(xw, k, gen) if init_labels is None else torch.as_tensor(init_labels).long().cpu()
        # initial support vectors: M random members of each cluster
        u = torch.empty(k, m, d, dtype=torch.float64)
        for j in range(k):
            members = torch.nonzero(labels == j).view(-1)
            if members.numel() == 0:
                members = torch.randint(n, (1,), generator=gen)
            pick = members[torch.randint(members.numel(), (m,), generator=gen)]
            u[j] = xw[pick]
        within = ((xw - u[labels, 0]) ** 2).sum(1).mean()
        gamma = float(d / (2.0 * within + eps)) if float(within) > 0 else 1.0
        model = KernelKMeans(u, gamma)
        for _ in range(iters):
            model.support = model.support + noise * scale * torch.randn(
                model.support.shape, generator=gen, dtype=torch.float64
            )
            d2 = model._sqdist(xw)  # (N, K, M)
            labels = lme(d2, -model.gamma, dim=2).argmin(1)  # E-step
            own = d2[torch.arange(n), labels]  # (N, M)
            resp = torch.softmax(-model.gamma * own, dim=1)  # K_nj within the assigned cluster
            kn = torch.zeros(n, k, m, dtype=torch.float64)
            kn[torch.arange(n), labels] = resp
            mass = kn.sum(0)  # (K, M)
            new_u = torch.einsum("nkm,nd->kmd", kn, xw) / mass.clamp_min(1e-300)[..., None]
            keep = mass <= 1e-12
            new_u[keep] = model.support[keep]
            model.support = new_u
            spread = float((kn * model._sqdist(xw)).sum())
            model.gamma = 1.0 / (2.0 / (n * d) * spread + eps)  # Eq. 38
        d2 = model._sqdist(xw)
        labels = lme(d2, -model.gamma, dim=2).argmin(1)
        model.objective = _objective(d2, labels, model.gamma) - n * d / 2.0 * math.log(model.gamma)
        if best is None or model.objective < best.objective:
            best = model
    assert best is not None
    best.support = best.support.to(x.dtype if x.dtype.is_floating_point else torch.float32)
    return best
