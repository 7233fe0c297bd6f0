"""Centroids in penultimate feature space ("Softmax is k-means").

* :func:`equidistant` — Theorem 1: Z_k = W_k + v with ‖Z_k‖ equal for all k, so
  argmax_k f·W_k = argmin_k ‖f - Z_k‖². The bias is folded in as an extra dimension
  (f̃ = [f, 1], W̃_k = [W_k, b_k]), as the proof allows for affine heads.
* :func:`class_means` — Sec. 4.1 / Algorithm 1: C = f(X) Y (YᵀY)⁻¹.
* :func:`kmeans` — k-means++ initialisation and batched Lloyd iterations on the device,
  with restarts; works on features of any layer. ``method="rbf"``: :func:`rbf_kmeans`.
* :func:`rbf_kmeans` — differentiable (soft) k-means: responsibilities
  ``r_k(x) = normalise(-‖x - μ_k‖² / T)`` (softmax or Entmax-1.5), the smooth loss
  ``L_T = Σ_x Σ_k r_k(x)‖x - μ_k‖²`` annealed towards the k-means objective (see
  :mod:`kmtools.heads.rbf` for the maths and numerics; the RBF head builds on these).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kmtools.errors import ConfigError, DataError


@dataclass
class Equidistant:
    """Theorem-1 centroids in the bias-augmented space: ``centroids`` (c, d+1), ``v`` (d+1,)."""

    centroids: torch.Tensor
    v: torch.Tensor

    @property
    def norm_spread(self) -> float:
        """max - min of the centroid norms (0 up to rounding: they are equidistant)."""
        n = self.centroids.double().norm(dim=1)
        return float(n.max() - n.min())


def augment(f: torch.Tensor) -> torch.Tensor:
    """[f, 1]: the extra dimension that folds the bias into the weights (proof of Thm. 1)."""
    return torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], dim=1)


def equidistant(head: nn.Linear) -> Equidistant:
    """Equidistant centroids of Theorem 1 from a linear head (weight (c, d), bias (c,)).

    Solves 2(W̃_1 - W̃_l)ᵀ v = ‖W̃_l‖² - ‖W̃_1‖²  (l = 2..c) for v — the proof's system,
    written so that ‖W̃_1 + v‖ = ‖W̃_l + v‖ — with the minimum-norm least-squares solution
    in float64; Z_k = W̃_k + v.
    """
    w = head.weight.detach().double().cpu()
    b = head.bias.detach().double().cpu() if head.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    wt = torch.cat([w, b[:, None]], dim=1)  # (c, d+1)
    c, d1 = wt.shape
    if d1 < c - 1:
        raise ConfigError(f"Theorem 1 needs feature dim >= classes - 1 (got {d1 - 1} features for {c} classes)")
    a = 2.0 * (wt[0:1] - wt[1:])  # (c-1, d+1)
    sq = (wt**2).sum(1)
    rhs = sq[1:] - sq[0]
    v = torch.linalg.pinv(a) @ rhs
    out = Equidistant(centroids=wt + v, v=v)
    scale = float(sq.abs().max().clamp_min(1e-30))
    if float((a @ v - rhs).abs().max()) > 1e-8 * scale:
        raise ConfigError(
            "Theorem 1 has no equidistant centroids for this head: the differences of its (bias-augmented) "
            "weight rows are linearly dependent, so 2(W̃_1 - W̃_l)ᵀv = ‖W̃_l‖² - ‖W̃_1‖² has no solution; "
            "use --method means or kmeans"
        )
    return out


def nearest(f: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean) for every row of ``f``."""
    out = []
    c = centroids.to(f.device, f.dtype)
    cn = (c**2).sum(1)
    for i in range(0, len(f), chunk):
        fb = f[i : i + chunk]
        d = (fb**2).sum(1, keepdim=True) - 2 * fb @ c.T + cn
        out.append(d.argmin(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=f.device)


def theorem1_agreement(features: torch.Tensor, scores: torch.Tensor, head: nn.Linear) -> float:
    """Share of inputs where the nearest equidistant centroid equals the network's argmax."""
    eq = equidistant(head)
    pred_nc = nearest(augment(features.double()), eq.centroids.to(features.device))
    return float((pred_nc == scores.argmax(1)).double().mean())


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C = f(X) Y (YᵀY)⁻¹ (Sec. 4.1), rows are class means, shape (c, d).

    A class with no sample is an error: its centroid would be undefined.
    """
    sums, counts = class_sums(features, labels, num_classes)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise DataError(f"classes {empty[:5]} have no samples: centroids need at least one per class")
    return (sums / counts[:, None]).to(features.dtype)


def class_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """f(X) Y and diag(YᵀY): per-class feature sums (float64) and counts (the statistics that
    DDP all-reduces before dividing)."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}")
    f = features.double()
    sums = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=f.device)
    sums.index_add_(0, labels.to(f.device), f)
    counts = torch.bincount(labels.to(f.device), minlength=num_classes).double()
    return sums, counts


def spread(features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> dict[str, Any]:
    """Per-class mean distance to the class centroid, and the minimum inter-centroid distance."""
    c = centroids.to(features.dtype)
    d = (features - c[labels]).norm(dim=1)
    per_class = [float(d[labels == k].mean()) if bool((labels == k).any()) else None for k in range(len(c))]
    pd = torch.cdist(c.double(), c.double())
    pd.fill_diagonal_(float("inf"))
    return {"per_class_spread": per_class, "min_centroid_distance": float(pd.min()) if len(c) > 1 else None}


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (k, d)
    labels: torch.Tensor  # (n,)
    inertia: float
    n_iter: int

    def to_dict(self) -> dict[str, Any]:
        return {"k": len(self.centroids), "inertia": self.inertia, "n_iter": self.n_iter,
                "sizes": torch.bincount(self.labels, minlength=len(self.centroids)).tolist()}


def _sqdist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return ((x**2).sum(1, keepdim=True) - 2 * x @ c.T + (c**2).sum(1)).clamp_min_(0)


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator, *, trials: int = 1) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): D² sampling; ``x`` (N, d) -> (k, d).

    ``trials = 1``: one D² sample per centre, drawn on ``generator``'s device (Lloyd's
    restarts). ``trials > 1``: greedy k-means++ as in scikit-learn (``2 + ⌊ln k⌋`` there):
    that many candidates per centre, drawn on the CPU, keeping the one that lowers the
    potential most (the RBF k-means).
    """
    n = len(x)
    dev = generator.device if trials == 1 else torch.device("cpu")
    first = int(torch.randint(n, (1,), generator=generator, device=dev).item())
    centers = [x[first]]
    d2 = squared_distances(x, x[first : first + 1]).squeeze(1)
    for _ in range(1, k):
        total = d2.sum()
        if trials == 1:
            if float(total) <= 0:
                idx = int(torch.randint(n, (1,), generator=generator, device=dev).item())
            else:
                idx = int(torch.multinomial(d2 / total, 1, generator=generator).item())
            centers.append(x[idx])
            d2 = torch.minimum(d2, squared_distances(x, x[idx : idx + 1]).squeeze(1))
            continue
        if float(total) <= 0:
            cand_idx = torch.randint(n, (trials,), generator=generator, device=dev).to(x.device)
        else:
            probs = (d2 / total).double().cpu()
            cand_idx = torch.multinomial(probs, trials, replacement=True, generator=generator).to(x.device)
        new_d2 = torch.minimum(d2.unsqueeze(1), squared_distances(x, x[cand_idx]))  # (N, trials)
        best = int(new_d2.sum(dim=0).argmin())
        centers.append(x[cand_idx[best]])
        d2 = new_d2[:, best]
    return torch.stack(centers)


def lloyd(x: torch.Tensor, init: torch.Tensor, max_iter: int = 300, tol: float = 1e-4) -> KMeansResult:
    """Batched Lloyd iterations from ``init``; stops when centroids move less than ``tol``
    (relative to the data variance, as scikit-learn does)."""
    c = init.clone()
    k = len(c)
    thresh = tol * float(x.var(0).mean()) if len(x) > 1 else 0.0
    labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        labels = _sqdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        shift = float(((new - c) ** 2).sum())
        c = new
        if shift <= thresh:
            break
    labels = _sqdist(x, c).argmin(1)
    inertia = float(_sqdist(x, c).gather(1, labels[:, None]).sum())
    return KMeansResult(c, labels, inertia, it)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    init: torch.Tensor | None = None,
    device: torch.device | None = None,
    method: str = "lloyd",
    progress: Callable[[int, int], None] | None = None,
) -> KMeansResult:
    """k-means on the rows of ``x`` (n, d): best of ``n_init`` k-means++ restarts by inertia.

    ``method="rbf"`` runs the differentiable RBF k-means (:func:`rbf_kmeans`: annealed
    temperature, softmax responsibilities) instead of Lloyd.
    """
    if x.dim() != 2:
        x = x.flatten(1)
    if not 1 <= k <= len(x):
        raise ConfigError(f"k must be between 1 and the number of samples ({len(x)}), got {k}")
    if not bool(torch.isfinite(x).all()):
        raise DataError("k-means input contains NaN or Inf")
    device = device or x.device
    xd = x.to(device).double() if device.type == "cpu" else x.to(device).float()
    if method == "rbf":
        return rbf_kmeans(xd, k, seed=seed, device=device)
    if method != "lloyd":
        raise ConfigError(f"unknown k-means method {method!r}: use lloyd or rbf")
    if init is not None:
        return lloyd(xd, init.to(xd), max_iter, tol)
    g = torch.Generator(device=device).manual_seed(seed)
    best: KMeansResult | None = None
    for r in range(n_init):
        res = lloyd(xd, kmeans_plusplus(xd, k, g), max_iter, tol)
        if best is None or res.inertia < best.inertia:
            best = res
        if progress:
            progress(r + 1, n_init)
    assert best is not None
    return best


NORMALISERS = ("softmax", "entmax15")


# ------------------------------------------------- soft (RBF) k-means: responsibilities and loss


def _entmax15() -> Callable[..., torch.Tensor]:
    """The ``entmax.entmax15`` function, imported lazily (optional extra ``heads``)."""
    try:
        from entmax import entmax15
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "normaliser 'entmax15' needs the entmax package: pip install 'kmtools[heads]' "
            "(or use --normaliser softmax)"
        ) from exc
    return entmax15  # type: ignore[no-any-return]




def check_normaliser(normaliser: str) -> str:
    if normaliser not in NORMALISERS:
        raise ConfigError(f"unknown normaliser {normaliser!r}: use one of {', '.join(NORMALISERS)}")
    if normaliser == "entmax15":
        _entmax15()
    return normaliser


def normalise(z: torch.Tensor, normaliser: str = "softmax", dim: int = -1) -> torch.Tensor:
    """Map scores ``z`` to a probability vector along ``dim``: softmax or Entmax-1.5.

    Both are shift-invariant and order-preserving, so ``argmax`` of the output is
    ``argmax`` of ``z`` (up to ties). Entmax-1.5 returns exact zeros for low scores.
    """
    if normaliser == "softmax":
        return torch.softmax(z, dim=dim)
    if normaliser == "entmax15":
        return _entmax15()(z, dim=dim)
    raise ConfigError(f"unknown normaliser {normaliser!r}: use one of {', '.join(NORMALISERS)}")


def _autocast_on(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4: no device argument
        return bool(torch.is_autocast_enabled())


def squared_distances(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``‖x_i - w_k‖²`` for rows ``x`` (N, d) and prototypes ``w`` (P, d): shape (N, P).

    Uses the dot-product form of the prototype paper, Eq. (10)-(12):
    ``‖x‖² - 2 xᵀw + ‖w‖²`` (one matrix product instead of N·P·d differences). To curb
    the cancellation of that form, both sides are first centred on the prototypes' mean
    (distances do not change), the result is clamped at 0, and the computation runs in at
    least float32 with autocast switched off (a bf16 matrix product would make the
    distances useless).
    """
    if _autocast_on(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return squared_distances(x, w)
    dtype = torch.promote_types(torch.promote_types(x.dtype, w.dtype), torch.float32)
    x = x.to(dtype)
    w = w.to(dtype)
    centre = w.mean(dim=0, keepdim=True).detach()
    xc = x - centre
    wc = w - centre
    d = (xc * xc).sum(-1, keepdim=True) - 2.0 * (xc @ wc.T) + (wc * wc).sum(-1).unsqueeze(0)
    return d.clamp_min(0.0)


def responsibilities(
    x: torch.Tensor, mu: torch.Tensor, temperature: float, normaliser: str = "softmax"
) -> torch.Tensor:
    """``r_k(x) = normalise(-‖x - μ_k‖² / T)``, shape (N, k), rows sum to 1.

    Computed as ``normalise(-(d - min_k d) / T)`` in float32 or better (identical in
    exact arithmetic, both normalisers being shift-invariant), so low temperatures and
    bf16 inputs neither overflow nor turn near-ties into exact ties.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    d = squared_distances(x, mu)
    z = -(d - d.min(dim=-1, keepdim=True).values) / temperature
    return normalise(z, normaliser)


def rbf_loss(
    x: torch.Tensor,
    mu: torch.Tensor,
    temperature: float,
    normaliser: str = "softmax",
    *,
    stop_grad: bool = False,
) -> torch.Tensor:
    """The smooth k-means loss ``L_T = Σ_x Σ_k r_k(x) ‖x - μ_k‖²`` (a sum, not a mean).

    ``stop_grad=True`` holds the responsibilities fixed, so the gradient is
    ``∂L/∂μ_k = -2 Σ_x r_k(x)(x - μ_k)`` (the term of the soft/Lloyd centroid update).
    """
    d = squared_distances(x, mu)
    r = responsibilities(x, mu, temperature, normaliser)
    if stop_grad:
        r = r.detach()
    return (r * d).sum()


def kmeans_objective(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """The k-means objective (inertia) ``J = Σ_x min_k ‖x - μ_k‖²``."""
    return squared_distances(x, mu).min(dim=-1).values.sum()


def soft_centroid_step(
    x: torch.Tensor, mu: torch.Tensor, temperature: float, normaliser: str = "softmax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One *gradient* step on ``μ`` of ``L_T`` with responsibilities held fixed.

    Step size per centroid ``η_k = 1 / (2 Σ_x r_k(x))``; the result equals the
    responsibility-weighted mean (Lloyd's update when ``r`` is one-hot). The gradient is
    taken by autograd, not written out, so this *is* a gradient step. Centroids with no
    responsibility mass (``Σ_x r_k = 0``) are left where they are.

    Returns ``(new_mu, mass)`` with ``mass = Σ_x r_k(x)`` of shape (k,).
    """
    mu_var = mu.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        d = squared_distances(x.detach(), mu_var)
        r = responsibilities(x.detach(), mu_var, temperature, normaliser).detach()
        (r * d).sum().backward()
    mass = r.sum(dim=0)
    grad = mu_var.grad
    assert grad is not None
    step = torch.where(mass > 0, 1.0 / (2.0 * mass.clamp_min(1e-30)), torch.zeros_like(mass))
    new_mu = mu_var.detach() - step.unsqueeze(1).to(grad.dtype) * grad
    return new_mu.to(mu.dtype), mass


# ----------------------------------------------------------------------- RBF k-means




def rbf_kmeans(
    x: torch.Tensor,
    k: int,
    *,
    t_start: float | None = None,
    t_end: float | None = None,
    steps: int = 100,
    normaliser: str = "softmax",
    seed: int = 0,
    device: str | torch.device = "auto",
    n_init: int = 1,
    batch_size: int = 65536,
) -> KMeansResult:
    """Differentiable k-means: anneal ``T`` from ``t_start`` to ``t_end`` (geometric) and take
    one gradient step of ``L_T`` on ``μ`` per temperature (step size ``1/(2Σr)``, see
    :func:`soft_centroid_step`), starting from k-means++ seeds.

    Parameters
    ----------
    x : (N, d) tensor of points.
    k : number of clusters.
    t_start, t_end : temperatures; default ``t_start`` = the mean squared distance of the
        points to their nearest seed (a within-cluster scale, so soft assignments blend
        neighbours without collapsing all centroids) and ``t_end = 1e-4 · t_start``.
    steps : number of temperatures (= gradient steps).
    normaliser : ``"softmax"`` or ``"entmax15"``.
    seed : seeds the k-means++ initialisation (CPU generator; results do not depend on the
        device beyond floating-point order).
    n_init : restarts with different seeds; the run with the lowest inertia wins.
    batch_size : rows per chunk when accumulating gradients (memory bound N·k).

    Returns
    -------
    :class:`kmtools.centroids.KMeansResult` (the type ``kmeans(method="lloyd")`` returns):
    ``centroids`` (k, d) float32 and ``labels`` (N,) int64 on ``x``'s device, where
    ``labels`` are hard nearest-centroid assignments, ``inertia`` the k-means objective
    ``Σ_x min_k ‖x - μ_k‖²`` of the returned centroids, and ``n_iter = steps``.

    Empty clusters (no responsibility mass) are re-seeded at the point farthest from its
    nearest centroid, as scikit-learn does.
    """
    from kmtools.device import resolve

    check_normaliser(normaliser)
    if x.dim() != 2:
        raise DataError(f"rbf_kmeans needs points of shape (N, d), got {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"k must be between 1 and the number of points ({n}), got {k}")
    if steps < 1 or n_init < 1:
        raise ConfigError("steps and n_init must be >= 1")
    if not torch.isfinite(x).all():
        raise DataError("rbf_kmeans: the points contain NaN or infinite values")
    dev = resolve(device)
    out_device = x.device
    xs = x.detach().to(dev, torch.float32)
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    for run in range(n_init):
        gen = torch.Generator(device="cpu").manual_seed(int(seed) + run)
        mu = kmeans_plusplus(xs, k, gen, trials=2 + int(math.log(k)) if k > 1 else 1)
        t0 = t_start
        if t0 is None:
            t0 = float(kmeans_objective(xs, mu)) / n
            t0 = t0 if t0 > 0 else 1.0
        t1 = t_end if t_end is not None else 1e-4 * t0
        if t0 <= 0 or t1 <= 0:
            raise ConfigError("t_start and t_end must be > 0")
        for s in range(steps):
            frac = s / (steps - 1) if steps > 1 else 1.0
            temp = t0 * (t1 / t0) ** frac
            mu = _chunked_step(xs, mu, temp, normaliser, batch_size)
        d = _chunked_min(xs, mu, batch_size)
        inertia = float(d[0].sum())
        if best is None or inertia < best[2]:
            best = (mu, d[1], inertia)
    assert best is not None
    return KMeansResult(best[0].to(out_device), best[1].to(out_device), best[2], steps)


def _chunked_min(x: torch.Tensor, mu: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    vals, idx = [], []
    for i in range(0, x.shape[0], batch_size):
        v, j = squared_distances(x[i : i + batch_size], mu).min(dim=-1)
        vals.append(v)
        idx.append(j)
    return torch.cat(vals), torch.cat(idx)


def _chunked_step(
    x: torch.Tensor, mu: torch.Tensor, temperature: float, normaliser: str, batch_size: int
) -> torch.Tensor:
    """:func:`soft_centroid_step` with gradients accumulated over row chunks, plus
    re-seeding of empty clusters."""
    mu_var = mu.detach().clone().requires_grad_(True)
    mass = torch.zeros(mu.shape[0], dtype=mu.dtype, device=mu.device)
    with torch.enable_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            d = squared_distances(xb, mu_var)
            r = normalise(-(d - d.min(dim=-1, keepdim=True).values) / temperature, normaliser).detach()
            (r * d).sum().backward()
            mass += r.sum(dim=0)
    grad = mu_var.grad
    assert grad is not None
    empty = mass <= 1e-12
    step = torch.where(empty, torch.zeros_like(mass), 1.0 / (2.0 * mass.clamp_min(1e-12)))
    new_mu = mu_var.detach() - step.unsqueeze(1) * grad
    if bool(empty.any()):
        far, _ = _chunked_min(x, new_mu, batch_size)
        for j in torch.nonzero(empty).flatten().tolist():
            i = int(far.argmax())
            new_mu[j] = x[i]
            far[i] = 0.0
    return new_mu
