"""NEON for standard k-means: neuralization and relevance propagation.

Reference: Kauffmann, Esders, Ruff, Montavon, Samek, Müller, "From Clustering to Cluster
Explanations via Neural Networks" (``papers/neon-cluster-explanations.txt``), Section II.

A k-means model with centroids μ_1..μ_K assigns x to cluster c when
‖x − μ_c‖² < ‖x − μ_k‖² for all k ≠ c (Eq. 1). Proposition 1 rewrites that decision as a
two-layer network (the "neuralized" k-means)::

    h_k(x) = w_kᵀx + b_k,   w_k = 2(μ_c − μ_k),   b_k = ‖μ_k‖² − ‖μ_c‖²     (layer 1)
    f_c(x) = min_{k≠c} h_k(x)                                               (layer 2)

so that h_k(x) = ‖x − μ_k‖² − ‖x − μ_c‖² (Supplement, App. A) and x is assigned to c iff
f_c(x) > 0. Relevance is propagated back with

* the min-take-most rule (Eq. 2): R_k = exp(−β h_k) / Σ_{k'≠c} exp(−β h_k') · f_c,
  with stiffness β = 1 / E[f_c] (Eq. 3);
* the midpoint rule (Eq. 4): R_i = Σ_{k≠c} (x_i − m_ik) w_ik / Σ_i' (x_i' − m_i'k) w_i'k · R_k,
  m_k = (μ_c + μ_k) / 2.

Because w_kᵀm_k = −b_k, the denominator of Eq. 4 is h_k itself, and
(x_i − m_ik) w_ik = (x_i − μ_ki)² − (x_i − μ_ci)² (the element-wise "nearest centroid
analysis" of Sec. VII). :func:`neon` evaluates Eq. 4 with three matrix products and never
materialises the (N, K, d) weight tensor, so it scales to deep features and many clusters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from kmtools.errors import ConfigError

__all__ = [
    "ClusterModel",
    "KMeansModel",
    "NeuralizedKMeans",
    "as_model",
    "assign",
    "cluster_score",
    "competitor_scores",
    "min_take_most",
    "neon",
    "neuralize",
    "stiffness",
]

_WORK = torch.float64  # NEON's head is cheap; float64 keeps Eq. 4's cancellations exact.


@runtime_checkable
class ClusterModel(Protocol):
    """What the baselines and the evaluation need from a clustering model.

    ``predict(x)`` returns hard assignments (N,); ``score(x, c)`` returns the differentiable
    cluster evidence f_c(x) (N,) whose sign is the assignment (f_c > 0 iff x → c);
    ``neon(x, c, beta)`` returns NEON relevance (N, d).
    """

    def predict(self, x: torch.Tensor) -> torch.Tensor: ...

    def score(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor: ...

    def neon(self, x: torch.Tensor, c: torch.Tensor, beta: float | None = None) -> torch.Tensor: ...


def _check_centroids(centroids: torch.Tensor, d: int | None = None) -> torch.Tensor:
    if not isinstance(centroids, torch.Tensor) or centroids.dim() != 2:
        raise ConfigError("centroids must be a (K, d) tensor")
    if centroids.shape[0] < 2:
        raise ConfigError("NEON needs at least 2 clusters: f_c is a minimum over the competitors k ≠ c")
    if d is not None and centroids.shape[1] != d:
        raise ConfigError(f"centroids have {centroids.shape[1]} features but the inputs have {d}")
    return centroids


def _check_x(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ConfigError("inputs must be an (N, d) tensor: flatten images or features first")
    return x


def _scores_sk(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """s_k(x) = 2 xᵀμ_k − ‖μ_k‖², so that h_k = s_c − s_k (Prop. 1) with one matmul."""
    return 2.0 * x @ mu.T - (mu * mu).sum(1)


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid assignment (Eq. 1), shape (N,)."""
    x = _check_x(x)
    mu = _check_centroids(centroids, x.shape[1]).to(x.device, _WORK)
    return _scores_sk(x.to(_WORK), mu).argmax(1)


def _assignments(x: torch.Tensor, centroids: torch.Tensor, assignments: torch.Tensor | None) -> torch.Tensor:
    if assignments is None:
        return assign(x, centroids)
    c = torch.as_tensor(assignments, device=x.device).long().reshape(-1)
    if c.numel() != x.shape[0]:
        raise ConfigError(f"assignments has {c.numel()} entries for {x.shape[0]} inputs")
    if c.numel() and (c.min() < 0 or c.max() >= centroids.shape[0]):
        raise ConfigError(f"assignments must lie in [0, {centroids.shape[0] - 1}]")
    return c


def competitor_scores(x: torch.Tensor, centroids: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Layer 1 of Prop. 1: h_k(x) = ‖x − μ_k‖² − ‖x − μ_c‖² (N, K), +inf at k = c.

    Computed in float64 as s_c − s_k with s_k = 2xᵀμ_k − ‖μ_k‖² (= w_kᵀx + b_k).
    """
    mu = centroids.to(x.device, _WORK)
    s = _scores_sk(x.to(_WORK), mu)
    h = s.gather(1, c.view(-1, 1)) - s
    return h.scatter(1, c.view(-1, 1), float("inf"))


def cluster_score(
    x: torch.Tensor, centroids: torch.Tensor, assignments: torch.Tensor | None = None
) -> torch.Tensor:
    """f_c(x) = min_{k≠c} h_k(x) (Prop. 1, layer 2), in x's dtype; > 0 iff x is assigned to c.

    Differentiable in ``x`` (used by the gradient baselines).
    """
    x = _check_x(x)
    centroids = _check_centroids(centroids, x.shape[1])
    c = _assignments(x.detach(), centroids, assignments)
    mu = centroids.to(x.device, x.dtype)
    s = 2.0 * x @ mu.T - (mu * mu).sum(1)
    h = s.gather(1, c.view(-1, 1)) - s
    h = h.masked_fill(torch.nn.functional.one_hot(c, mu.shape[0]).bool(), float("inf"))
    return h.min(1).values


def stiffness(x: torch.Tensor, centroids: torch.Tensor, assignments: torch.Tensor | None = None) -> float:
    """Eq. 3: β = 1 / E[f_c], the expectation over the data ``x`` passed (each point's own cluster).

    Raises when E[f_c] ≤ 0 (the assignments then disagree with the centroids).
    """
    x = _check_x(x)
    centroids = _check_centroids(centroids, x.shape[1])
    c = _assignments(x, centroids, assignments)
    f = competitor_scores(x, centroids, c).min(1).values
    m = float(f.mean())
    if not m > 0:
        raise ConfigError(
            f"E[f_c] = {m:.3g} ≤ 0: the assignments are not the nearest centroids; pass beta explicitly"
        )
    return 1.0 / m


@dataclass
class NeuralizedKMeans:
    """The network of Proposition 1 for N inputs with assigned clusters ``c``.

    ``weight`` (N, K, d): w_k = 2(μ_c − μ_k); ``bias`` (N, K): b_k = ‖μ_k‖² − ‖μ_c‖²;
    ``mask`` (N, K): True for the competitors k ≠ c (the row k = c is zero and unused).
    Explicit and easy to read; :func:`neon` computes the same thing without the (N, K, d) tensor.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mask: torch.Tensor
    c: torch.Tensor

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Layer 1: h_k = w_kᵀx + b_k (N, K), +inf where k = c."""
        h = torch.einsum("nkd,nd->nk", self.weight, x.to(self.weight.dtype)) + self.bias
        return h.masked_fill(~self.mask, float("inf"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Layer 2: f_c = min_{k≠c} h_k (N,)."""
        return self.hidden(x).min(1).values

    __call__ = forward


def neuralize(centroids: torch.Tensor, c: torch.Tensor) -> NeuralizedKMeans:
    """Proposition 1: w_k = 2(μ_c − μ_k), b_k = ‖μ_k‖² − ‖μ_c‖² for each assigned cluster c.

    ``centroids`` (K, d), ``c`` (N,) cluster indices. Returns float64 weights (N, K, d).
    """
    centroids = _check_centroids(centroids)
    mu = centroids.to(_WORK)
    c = torch.as_tensor(c, device=mu.device).long().reshape(-1)
    mu_c = mu[c]  # (N, d)
    weight = 2.0 * (mu_c[:, None, :] - mu[None, :, :])
    sq = (mu * mu).sum(1)
    bias = sq[None, :] - sq[c][:, None]
    mask = torch.ones(c.numel(), mu.shape[0], dtype=torch.bool, device=mu.device)
    mask[torch.arange(c.numel(), device=mu.device), c] = False
    return NeuralizedKMeans(weight, bias, mask, c)


def min_take_most(h: torch.Tensor, beta: float, f: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: R_k = exp(−β h_k) / Σ_{k'} exp(−β h_k') · f, over the finite entries of ``h``.

    ``h`` (N, K) with +inf on non-competitors (they get R_k = 0); ``f`` (N,) defaults to
    min_k h_k. β = 0 redistributes uniformly (Prop. 2), β → ∞ gives min-take-all.
    Σ_k R_k = f exactly.
    """
    if beta < 0:
        raise ConfigError(f"beta must be ≥ 0, got {beta}")
    finite = torch.isfinite(h)
    if f is None:
        f = h.min(1).values
    logits = torch.where(finite, -beta * h.masked_fill(~finite, 0.0), torch.full_like(h, float("-inf")))
    return torch.softmax(logits, dim=1) * f.unsqueeze(1)


def _stabilize(t: torch.Tensor, eps: float) -> torch.Tensor:
    return t + eps * torch.where(t >= 0, torch.ones_like(t), -torch.ones_like(t))


def neon(
    x: torch.Tensor,
    centroids: torch.Tensor,
    assignments: torch.Tensor | None = None,
    beta: float | None = None,
    reference: str | torch.Tensor = "midpoint",
    *,
    eps: float = 1e-12,
) -> torch.Tensor:
    """NEON relevance of the k-means assignment of each row of ``x`` (Sec. II-B), shape (N, d).

    Parameters
    ----------
    x : (N, d) inputs.
    centroids : (K, d) k-means centroids, K ≥ 2.
    assignments : (N,) cluster to explain per input; default the nearest centroid (Eq. 1).
        Another cluster may be given ("why not c?"): f_c is then negative.
    beta : stiffness of the min-take-most rule (Eq. 2); default 1 / E[f_c] over ``x`` (Eq. 3).
        For a single input or a small batch pass the β of the whole dataset (:func:`stiffness`).
    reference : ``"midpoint"`` (Eq. 4, root point m_k = (μ_c + μ_k)/2, the paper's rule),
        ``"zero"`` (root point 0, the LRP-0 rule on layer 1) or a (d,) tensor root point x̃.

    Returns
    -------
    (N, d) relevance in ``x``'s dtype with Σ_i R_i = f_c(x) (conservation; exact for the
    midpoint rule, and for any root point up to the stabiliser ``eps`` of the denominators).

    Notes
    -----
    With q_k = R_k / h_k, Eq. 4 reads R_i = Σ_k q_k [(x_i − μ_ki)² − (x_i − μ_ci)²]
    = Q (2x_i μ_ci − μ_ci²) − 2x_i (qᵀμ)_i + (qᵀμ²)_i with Q = Σ_k q_k. The rule is invariant
    to translating x and all centroids together (Sec. II-B); for K = 2 it equals the Shapley
    value of the linear f_c with reference point m_k (Prop. 3).
    """
    x = _check_x(x)
    centroids = _check_centroids(centroids, x.shape[1])
    c = _assignments(x, centroids, assignments)
    if beta is None:
        beta = stiffness(x, centroids, c)
    xw = x.to(_WORK)
    mu = centroids.to(x.device, _WORK)
    h = competitor_scores(xw, mu, c)  # (N, K), inf at c
    f = h.min(1).values
    rk = min_take_most(h, float(beta), f)  # Eq. 2, zero at k = c
    mu_c = mu[c]
    if isinstance(reference, str) and reference == "midpoint":
        # Eq. 4 with root point m_k: the denominator Σ_i (x_i − m_ik) w_ik equals h_k.
        q = rk / _stabilize(h.masked_fill(~torch.isfinite(h), 1.0), eps)
        big_q = q.sum(1, keepdim=True)
        r = big_q * (2.0 * xw * mu_c - mu_c * mu_c) - 2.0 * xw * (q @ mu) + q @ (mu * mu)
    else:
        if isinstance(reference, str):
            if reference != "zero":
                raise ConfigError(f"reference must be 'midpoint', 'zero' or a tensor, got {reference!r}")
            root = torch.zeros(x.shape[1], dtype=_WORK, device=x.device)
        else:
            root = torch.as_tensor(reference, dtype=_WORK, device=x.device).reshape(-1)
            if root.numel() != x.shape[1]:
                raise ConfigError(f"reference has {root.numel()} values for {x.shape[1]} features")
        z = xw - root  # (N, d)
        # denominator w_kᵀ(x − x̃) = 2 zᵀμ_c − 2 zᵀμ_k
        zc = (z * mu_c).sum(1, keepdim=True)
        den = 2.0 * (zc - z @ mu.T)
        q = torch.where(rk != 0, rk / _stabilize(den, eps), torch.zeros_like(rk))
        r = 2.0 * z * (q.sum(1, keepdim=True) * mu_c - q @ mu)
    return r.to(x.dtype)


@dataclass
class KMeansModel:
    """A k-means model as a :class:`ClusterModel` (centroids (K, d))."""

    centroids: torch.Tensor

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return assign(x, self.centroids)

    def score(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return cluster_score(x, self.centroids, c)

    def stiffness(self, x: torch.Tensor) -> float:
        return stiffness(x, self.centroids)

    def neon(self, x: torch.Tensor, c: torch.Tensor, beta: float | None = None) -> torch.Tensor:
        return neon(x, self.centroids, c, beta)


def as_model(centroids: torch.Tensor | ClusterModel) -> ClusterModel:
    """Centroids (K, d) → :class:`KMeansModel`; a :class:`ClusterModel` passes through."""
    if isinstance(centroids, torch.Tensor):
        return KMeansModel(_check_centroids(centroids))
    if isinstance(centroids, ClusterModel):
        return centroids
    raise ConfigError(f"expected centroids (K, d) or a cluster model, got {type(centroids).__name__}")
