"""Feature-adding AUC (Algorithm 1) with KDE conditional imputation (Appendix G).

Reference: Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks",
Sec. VII-A (Algorithm 1) and Supplement Appendix G (KDE-based imputation).

Algorithm 1, for a point z ∈ R^d assigned to cluster c and its explanation R::

    I = ∅; curve = []
    for ι in argsort(−R):            # most relevant first
        I = I ∪ {ι}
        x ~ p_KDE(x | z_I)           # the missing features are imputed
        curve.append(g_c(x))         # cluster indicator 1{x → c}
    return area_under(curve) · 100 / d

The area is the sum of the d curve values (unit steps), so the AUC lies in [0, 100]; the
last value is always g_c(z) = 1. Missing features are drawn from the conditional of a
Gaussian KDE fitted to the data (Eqs. 43–44), or set to zero for deep activations
(Sec. VII-A). The score is averaged over points and over ``repeats`` runs of the sampler.

Implementation choices the paper leaves open (documented, applied to every method alike):
features with equal relevance are ordered at random (fresh per repeat), so a method that
ties many features (PDA with the indicator) is not favoured or penalised by feature order;
the KDE is fitted on the whole data set passed as ``data`` (default the points explained),
which includes z itself, as in Appendix G ("the whole training set").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from kmtools.errors import ConfigError
from kmtools.explain._threads import small_work
from kmtools.explain.baselines import METHODS
from kmtools.explain.kde import KDE, _gumbel_pick, loo_sigma
from kmtools.explain.neon import ClusterModel, as_model

__all__ = ["KDE", "feature_adding_auc", "feature_adding_curves", "loo_sigma", "table_row"]  # KDE, loo_sigma: from .kde

Progress = Callable[[int, int], None]


def _order(relevance: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """argsort(−R) per row with ties broken at random (Algorithm 1's loop order)."""
    r = relevance.detach().to(torch.float64).cpu()
    shuffle = torch.rand(r.shape, generator=gen).argsort(1)
    shuffled = -r.gather(1, shuffle)
    pos = torch.sort(shuffled, dim=1, stable=True).indices
    return shuffle.gather(1, pos)


def _steps(d: int, steps: int | None) -> torch.Tensor:
    if steps is None or steps >= d:
        return torch.arange(1, d + 1)
    if steps < 1:
        raise ConfigError("steps must be ≥ 1")
    return torch.unique(torch.round(torch.linspace(1, d, steps)).long())


@small_work
def feature_adding_curves(
    x: torch.Tensor,
    centroids: torch.Tensor | ClusterModel,
    assignments: torch.Tensor | None,
    relevance: torch.Tensor,
    imputation: str = "kde",
    sigma: float | None = None,
    repeats: int = 10,
    seed: int = 0,
    *,
    data: torch.Tensor | None = None,
    steps: int | None = None,
    chunk: int = 20_000_000,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The curves of Algorithm 1: (repeats, N, T) values of g_c, T = d (or ``steps`` points).

    ``relevance`` (N, d) or (repeats, N, d) (one explanation per repeat, e.g. for random
    attributions). See :func:`feature_adding_auc` for the parameters.
    """
    if x.dim() != 2:
        raise ConfigError("feature_adding_auc needs (N, d) inputs: flatten them first")
    n, d = x.shape
    if relevance.shape[-2:] != (n, d) or relevance.dim() not in (2, 3):
        raise ConfigError(f"relevance has shape {tuple(relevance.shape)}, inputs {tuple(x.shape)}")
    rel = relevance.reshape(-1, n, d)
    if repeats < 1:
        raise ConfigError("repeats must be ≥ 1")
    if rel.shape[0] not in (1, repeats):
        raise ConfigError(f"relevance holds {rel.shape[0]} explanations for {repeats} repeats")
    model = as_model(centroids)
    xw = x.detach()
    c = model.predict(xw) if assignments is None else torch.as_tensor(assignments, device=x.device).long()
    ts = _steps(d, steps)
    kde: KDE | None = None
    if imputation == "kde":
        kde = KDE.fit(xw if data is None else data, sigma=sigma)
    elif imputation != "zero":
        raise ConfigError(f"imputation must be 'kde' or 'zero', got {imputation!r}")
    gen = torch.Generator().manual_seed(int(seed))
    curves = torch.empty(repeats, n, ts.numel(), dtype=torch.float64)
    ntr = kde.data.shape[0] if kde is not None else 1
    per = max(1, chunk // max(1, ts.numel() * max(ntr, d)))
    zcpu = xw.to(torch.float64).cpu()
    for r in range(repeats):
        order = _order(rel[r if rel.shape[0] > 1 else 0], gen)  # (N, d)
        rank = order.argsort(1)  # position of each feature in the ordering
        for s in range(0, n, per):
            z = zcpu[s : s + per]
            b = z.shape[0]
            present = rank[s : s + per, None, :] < ts[None, :, None]  # (b, T, d)
            if kde is None:
                xi = torch.where(present, z[:, None, :], torch.zeros((), dtype=torch.float64))
            else:
                diff = (z[:, None, :] - kde.data[None, :, :]) ** 2  # (b, Ntr, d)
                ordered = diff.gather(2, order[s : s + per, None, :].expand(-1, ntr, -1))
                cum = ordered.cumsum(2)[:, :, ts - 1]  # (b, Ntr, T): ‖z_P − x_n,P‖² for each step
                idx = _gumbel_pick(-cum.transpose(1, 2) / (2.0 * kde.sigma**2), gen)  # (b, T)
                drawn = kde.data[idx] + kde.sigma * torch.randn(
                    b, ts.numel(), d, generator=gen, dtype=torch.float64
                )
                xi = torch.where(present, z[:, None, :], drawn)
            flat = xi.reshape(-1, d).to(x.device, x.dtype)
            pred = model.predict(flat).reshape(b, ts.numel()).cpu()
            curves[r, s : s + b] = (pred == c[s : s + b].cpu()[:, None]).to(torch.float64)
            if progress is not None:
                progress(r * n + s + b, repeats * n)
    return curves


def feature_adding_auc(
    x: torch.Tensor,
    centroids: torch.Tensor | ClusterModel,
    assignments: torch.Tensor | None,
    relevance: torch.Tensor,
    imputation: str = "kde",
    sigma: float | None = None,
    repeats: int = 10,
    seed: int = 0,
    *,
    data: torch.Tensor | None = None,
    steps: int | None = None,
    progress: Progress | None = None,
) -> float:
    """Algorithm 1: the feature-adding AUC in [0, 100], averaged over points and repeats.

    Parameters
    ----------
    x : (N, d) points explained (raw features, or the activations of a deep layer).
    centroids : (K, d) k-means centroids or a cluster model (kernel k-means).
    assignments : (N,) clusters c whose indicator g_c is tracked; default the model's.
    relevance : (N, d) explanation (or (repeats, N, d), one per repeat).
    imputation : ``"kde"`` (Appendix G conditional sampling) or ``"zero"`` (deep activations).
    sigma : KDE bandwidth; default by leave-one-out (Eq. 42) on ``data``.
    repeats : runs of the sampler (and of the random tie-breaking) averaged.
    seed : seeds the sampler and the tie-breaking.
    data : the KDE's training set, default ``x``.
    steps : evaluate the curve at this many feature counts only (an approximation for large d).
    """
    curves = feature_adding_curves(
        x, centroids, assignments, relevance, imputation, sigma, repeats, seed,
        data=data, steps=steps, progress=progress,
    )
    return float(curves.mean() * 100.0)


@small_work
def table_row(
    x: torch.Tensor,
    centroids: torch.Tensor | ClusterModel,
    *,
    methods: Sequence[str] | None = None,
    imputation: str = "kde",
    repeats: int = 10,
    seed: int = 0,
    beta: float | None = None,
    sigma: float | None = None,
    data: torch.Tensor | None = None,
    steps: int | None = None,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, float]:
    """A Table I row: the AUC of every method on ``x`` (their own clusters), same protocol for all.

    ``methods`` defaults to every applicable method of :data:`~kmtools.explain.baselines.METHODS`
    (NCA needs centroids; PDAcs needs KDE imputation). Methods with a random component
    (``random``, ``PDAcs``) are recomputed per repeat with seed ``seed + repeat``; ``beta``
    (NEON's stiffness) defaults to 1/E[f_c] over ``x`` (Eq. 3).
    """
    model = as_model(centroids)
    c = model.predict(x)
    if methods is None:
        methods = [
            m for m in METHODS
            if not (m == "NCA" and not isinstance(centroids, torch.Tensor))
            and not (m == "PDAcs" and imputation != "kde")
        ]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
    kde_sigma = sigma
    if imputation == "kde" and kde_sigma is None:
        kde_sigma = loo_sigma(x if data is None else data)
    extra = {k: dict(v) for k, v in (method_kwargs or {}).items()}
    row: dict[str, float] = {}
    for name in methods:
        fn = METHODS[name]
        kw: dict[str, Any] = {"beta": beta, "sigma": kde_sigma, "data": data, **extra.get(name, {})}
        if name in ("random", "PDAcs"):
            rel = torch.stack([fn(x, centroids, c, seed=seed + r, **kw) for r in range(repeats)])
        else:
            rel = fn(x, centroids, c, seed=seed, **kw)
        cb = None if progress is None else (lambda a, b, name=name: progress(name, a, b))
        row[name] = feature_adding_auc(
            x, model, c, rel, imputation, kde_sigma, repeats, seed,
            data=data, steps=steps, progress=cb,
        )
    return row
