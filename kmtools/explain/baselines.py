"""The explanation baselines of the NEON paper's evaluation (Sec. VII, Tables I and II).

Reference: Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks",
Section VII ("we consider integrated gradients (IG) ... Prediction Difference Analysis (PDA)
... random attribution, squared features x², sensitivity analysis (∇f)², ... 'nearest
centroid analysis' (NCA)") and Table II (the x² baseline is (x − x̃)²).

Every baseline has NEON's signature ``fn(x, centroids, assignments=None, **kw) -> (N, d)``;
``centroids`` may also be any :class:`~kmtools.explain.neon.ClusterModel` (e.g. a
:class:`~kmtools.explain.kernel.KernelKMeans`), except for NCA which needs centroids.
The gradient methods differentiate the neuralized evidence f_c(x) of Prop. 1 (or Prop. 5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kmtools.errors import ConfigError
from kmtools.explain.kde import KDE
from kmtools.explain.neon import ClusterModel, as_model, competitor_scores, neon

__all__ = [
    "BASELINES",
    "METHODS",
    "gradient_input",
    "integrated_gradients",
    "nca",
    "neon_method",
    "pda",
    "random_relevance",
    "sensitivity",
    "squared",
]

Centroids = torch.Tensor | ClusterModel
Method = Callable[..., torch.Tensor]


def _setup(
    x: torch.Tensor, centroids: Centroids, assignments: torch.Tensor | None
) -> tuple[ClusterModel, torch.Tensor]:
    if x.dim() != 2:
        raise ConfigError("inputs must be an (N, d) tensor")
    model = as_model(centroids)
    c = model.predict(x) if assignments is None else torch.as_tensor(assignments, device=x.device).long()
    return model, c


def random_relevance(
    x: torch.Tensor, centroids: Centroids, assignments: torch.Tensor | None = None, *, seed: int = 0, **_: Any
) -> torch.Tensor:
    """'random attribution' (Sec. VII): i.i.d. uniform scores, a ranking uninformed by the model."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(x.shape, generator=gen, dtype=torch.float64).to(x.device, x.dtype)


def squared(
    x: torch.Tensor,
    centroids: Centroids,
    assignments: torch.Tensor | None = None,
    *,
    reference: torch.Tensor | None = None,
    **_: Any,
) -> torch.Tensor:
    """'squared features x²' (Sec. VII), (x − x̃)² in Table II; x̃ = 0 by default.

    On standardised data (Table I) x̃ = 0 is the data mean; it ignores the clustering.
    """
    ref = torch.zeros(()) if reference is None else torch.as_tensor(reference)
    return (x - ref.to(x.device, x.dtype)) ** 2


def nca(
    x: torch.Tensor, centroids: Centroids, assignments: torch.Tensor | None = None, **_: Any
) -> torch.Tensor:
    """'nearest centroid analysis' (Sec. VII): (x − μ_k)² − (x − μ_c)² element-wise, k the nearest competitor.

    Equals NEON's midpoint rule with min-take-all (β → ∞); Σ_i R_i = f_c(x).
    """
    if not isinstance(centroids, torch.Tensor):
        raise ConfigError("NCA needs the centroids of a standard k-means model")
    c = _setup(x, centroids, assignments)[1]
    mu = centroids.to(x.device, x.dtype)
    k = competitor_scores(x, centroids, c).argmin(1)
    return (x - mu[k]) ** 2 - (x - mu[c]) ** 2


def _grad(model: ClusterModel, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        xi = x.detach().clone().requires_grad_(True)
        f = model.score(xi, c)
        (g,) = torch.autograd.grad(f.sum(), xi)
    return g


def sensitivity(
    x: torch.Tensor, centroids: Centroids, assignments: torch.Tensor | None = None, **_: Any
) -> torch.Tensor:
    """Sensitivity analysis (∇f_c)² (Sec. VII; Zurada 1994, Baehrens 2010)."""
    model, c = _setup(x, centroids, assignments)
    return _grad(model, x, c) ** 2


def gradient_input(
    x: torch.Tensor, centroids: Centroids, assignments: torch.Tensor | None = None, **_: Any
) -> torch.Tensor:
    """Gradient × input, ∇f_c(x) ⊙ x (not in the paper's table; a common cheap baseline)."""
    model, c = _setup(x, centroids, assignments)
    return _grad(model, x, c) * x


def integrated_gradients(
    x: torch.Tensor,
    centroids: Centroids,
    assignments: torch.Tensor | None = None,
    *,
    steps: int = 10,
    baseline: torch.Tensor | None = None,
    **_: Any,
) -> torch.Tensor:
    """Integrated gradients of f_c (Sundararajan et al. 2017), 'IG-10' with ``steps`` = 10 (Sec. VII).

    The path runs on a straight line from ``baseline`` (default the origin, as in the paper)
    to x; the integral is the right Riemann sum of Sundararajan et al., Sec. 3:
    R_i = (x_i − x̃_i) · (1/m) Σ_{s=1..m} ∂f_c/∂x_i (x̃ + (s/m)(x − x̃)).
    """
    if steps < 1:
        raise ConfigError("steps must be ≥ 1")
    model, c = _setup(x, centroids, assignments)
    ref = torch.zeros(()) if baseline is None else torch.as_tensor(baseline)
    base = ref.to(x.device, x.dtype).expand_as(x)
    total = torch.zeros_like(x)
    for s in range(1, steps + 1):
        total += _grad(model, base + (s / steps) * (x - base), c)
    return (x - base) * total / steps


def pda(
    x: torch.Tensor,
    centroids: Centroids,
    assignments: torch.Tensor | None = None,
    *,
    imputation: str = "zero",
    target: str = "indicator",
    samples: int = 10,
    data: torch.Tensor | None = None,
    sigma: float | None = None,
    seed: int = 0,
    **_: Any,
) -> torch.Tensor:
    """Prediction difference analysis (Robnik-Šikonja & Kononenko 2008; Zintgraf et al. 2017).

    R_i = g(x) − E[g(x with feature i removed)], the effect on the decision function of
    removing feature i (Sec. VII). ``target="indicator"`` uses the cluster indicator
    g_c(x) = 1{x → c} (the "decision function", which is all PDA needs in Table II);
    ``target="score"`` uses f_c(x) instead. The removed feature is set to zero (PDA0,
    ``imputation="zero"``) or drawn ``samples`` times from the KDE conditional p(x_i | x_rest)
    of Appendix G (PDAcs, ``imputation="kde"``; ``data`` is the KDE's training set, default
    ``x``; ``sigma`` default by leave-one-out, Eq. 42).
    """

    model, c = _setup(x, centroids, assignments)
    if target not in ("indicator", "score"):
        raise ConfigError(f"target must be 'indicator' or 'score', got {target!r}")
    n, d = x.shape

    def g(z: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
        if target == "indicator":
            return (model.predict(z) == cc).to(torch.float64)
        return model.score(z, cc).detach().to(torch.float64)

    base = g(x, c)
    out = torch.empty(n, d, dtype=torch.float64, device=x.device)
    if imputation == "zero":
        for i in range(d):
            z = x.clone()
            z[:, i] = 0
            out[:, i] = base - g(z, c)
    elif imputation == "kde":
        kde = KDE.fit(x if data is None else data, sigma=sigma)
        gen = torch.Generator().manual_seed(int(seed))
        for i in range(d):
            present = torch.ones(d, dtype=torch.bool)
            present[i] = False
            z = kde.sample_conditional(x, present, samples, gen)  # (N, S, d)
            vals = g(z.reshape(n * samples, d), c.repeat_interleave(samples)).reshape(n, samples)
            out[:, i] = base - vals.mean(1)
    else:
        raise ConfigError(f"imputation must be 'zero' or 'kde', got {imputation!r}")
    return out.to(x.dtype)


def neon_method(
    x: torch.Tensor,
    centroids: Centroids,
    assignments: torch.Tensor | None = None,
    *,
    beta: float | None = None,
    **_: Any,
) -> torch.Tensor:
    """NEON with the baselines' signature (standard or kernel k-means)."""
    if isinstance(centroids, torch.Tensor):
        return neon(x, centroids, assignments, beta)
    model, c = _setup(x, centroids, assignments)
    return model.neon(x, c, beta)


def _pda_zero(
    x: torch.Tensor, centroids: Centroids, assignments: torch.Tensor | None = None, **kw: Any
) -> torch.Tensor:
    kw.pop("imputation", None)
    return pda(x, centroids, assignments, imputation="zero", **kw)


def _pda_kde(
    x: torch.Tensor, centroids: Centroids, assignments: torch.Tensor | None = None, **kw: Any
) -> torch.Tensor:
    kw.pop("imputation", None)
    return pda(x, centroids, assignments, imputation="kde", **kw)


#: Baselines by the column names of Table I (plus gradient × input).
BASELINES: dict[str, Method] = {
    "random": random_relevance,
    "x2": squared,
    "PDA0": _pda_zero,
    "PDAcs": _pda_kde,
    "grad2": sensitivity,
    "gradxinput": gradient_input,
    "IG-10": integrated_gradients,
    "NCA": nca,
}

#: Every method of the comparison, NEON last as in Table I.
METHODS: dict[str, Method] = {**BASELINES, "NEON": neon_method}
