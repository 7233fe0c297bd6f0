"""Centroids in penultimate feature space ("Softmax is k-means").

* :func:`equidistant` — Theorem 1: Z_k = W_k + v with ‖Z_k‖ equal for all k, so
  argmax_k f·W_k = argmin_k ‖f - Z_k‖². The bias is folded in as an extra dimension
  (f̃ = [f, 1], W̃_k = [W_k, b_k]), as the proof allows for affine heads.
* :func:`class_means` — Sec. 4.1 / Algorithm 1: C = f(X) Y (YᵀY)⁻¹.
* :func:`kmeans` — k-means++ initialisation and batched Lloyd iterations on the device,
  with restarts; works on features of any layer.
"""

from __future__ import annotations

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


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): D² sampling on the device."""
    n = len(x)
    first = int(torch.randint(n, (1,), generator=generator, device=generator.device).item())
    centers = [x[first]]
    d2 = _sqdist(x, x[first : first + 1]).squeeze(1)
    for _ in range(1, k):
        total = d2.sum()
        if float(total) <= 0:
            idx = int(torch.randint(n, (1,), generator=generator, device=generator.device).item())
        else:
            idx = int(torch.multinomial(d2 / total, 1, generator=generator).item())
        centers.append(x[idx])
        d2 = torch.minimum(d2, _sqdist(x, x[idx : idx + 1]).squeeze(1))
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

    ``method="rbf"`` runs the differentiable RBF k-means of ``kmtools.heads.rbf`` (annealed
    temperature, Entmax-1.5 or softmax responsibilities) instead of Lloyd.
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
        from kmtools.heads.rbf import rbf_kmeans

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
