"""Theorem 2 of "Softmax is k-means" per input: the feature-space margin, the exact distance
to the decision boundary in feature space and the log-confidence of the predicted class,
for :func:`kmtools.evaluate.evaluate`."""

from __future__ import annotations

import math

import torch
from torch import nn

from kmtools.errors import ConfigError
from kmtools.models.core import KmModel, head_confidences

# --------------------------------------------------------------------------- Theorem 2


def theorem2_margin(
    features: torch.Tensor, centroids: torch.Tensor, predictions: torch.Tensor
) -> torch.Tensor:
    """Feature-space margin of Theorem 2, per input: max(0, min_{l≠k} ‖C_l − C_k‖/2 − ‖f(x) − C_k‖).

    Derivation (paper, Theorem 2 and its proof). Let k be the predicted class of x, i.e. the
    nearest centroid of f(x) = f_p(x), and let x̃ = x + Δ be predicted as l ≠ k. By the
    triangle inequality and the Lipschitz continuity of f with modulus L_p (Eq. 3),

        ‖f(x̃) − C_k‖ ≤ ‖f(x̃) − f(x)‖ + ‖f(x) − C_k‖ ≤ L_p‖Δ‖ + ‖f(x) − C_k‖,

    and again by the triangle inequality ‖C_l − C_k‖ ≤ ‖f(x̃) − C_l‖ + ‖f(x̃) − C_k‖. The
    theorem keeps the unknown ‖f(x̃) − C_l‖ in its bound. Since x̃ is assigned to l, f(x̃) is
    at least as close to C_l as to C_k, so its worst case is ‖f(x̃) − C_l‖ ≤ ‖f(x̃) − C_k‖;
    hence ‖C_l − C_k‖ ≤ 2‖f(x̃) − C_k‖ ≤ 2(L_p‖Δ‖ + ‖f(x) − C_k‖), i.e.

        ‖Δ‖ ≥ (‖C_l − C_k‖/2 − ‖f(x) − C_k‖) / L_p ≥ (min_{l≠k} ‖C_l − C_k‖/2 − ‖f(x) − C_k‖) / L_p,

    which holds for every l, so for any Δ that changes the prediction. The bound is
    vacuous (0) when f(x) is farther from its centroid than half the distance to the
    nearest other centroid. This function returns the numerator (L_p = 1); divide by L_p
    for the input-space bound.

    Args:
        features: (N, d) features f(x) in the space of ``centroids``.
        centroids: (c, d), c ≥ 2.
        predictions: (N,) the predicted class k of each input (its nearest centroid).
    """
    if centroids.dim() != 2 or centroids.shape[0] < 2:
        raise ConfigError("Theorem 2 needs at least two centroids (shape (c, d), c >= 2)")
    f = features.detach().double()
    c = centroids.detach().double().to(f.device)
    dc = torch.cdist(c, c)
    dc.fill_diagonal_(math.inf)
    half_gap = dc.min(dim=1).values / 2.0  # (c,)
    k = predictions.to(f.device).long()
    own = (f - c[k]).norm(dim=1)
    return (half_gap[k] - own).clamp_min(0.0)


def boundary_distance(features: torch.Tensor, head: nn.Module, predictions: torch.Tensor) -> torch.Tensor | None:
    """Exact feature-space distance from f(x) to the decision boundary of ``head``, per input
    (float64), or None for heads whose boundary is not a union of hyperplanes.

    The region where class k wins is an intersection of half-spaces {s_k ≥ s_l}, so the
    distance from a point inside it to its boundary is the smallest distance to one of the
    hyperplanes s_k = s_l:

    * Gauss (and any nearest-centroid head with one shared γ): the bisector of C_k and C_l,
      distance (‖f - C_l‖² - ‖f - C_k‖²) / (2‖C_l - C_k‖);
    * softmax (linear head z = Wf + b): (z_k - z_l) / ‖w_k - w_l‖.

    ``predictions`` is the predicted class k (its argmax); inputs predicted otherwise get a
    non-positive distance. Theorem 2's margin is a lower bound of this (see
    :func:`theorem2_margin`).
    """
    f = features.detach().double()
    k = predictions.to(f.device).long()
    cents = getattr(head, "centroids", None)
    if hasattr(head, "log_kappa") and isinstance(cents, torch.Tensor):
        c = cents.detach().double().to(f.device)
        d2 = torch.cdist(f, c).pow(2)
        num = d2 - d2.gather(1, k[:, None])
        den = 2.0 * torch.cdist(c, c)[k]
    elif isinstance(head, nn.Linear):
        w = head.weight.detach().double().to(f.device)
        b = (head.bias.detach().double().to(f.device) if head.bias is not None
             else torch.zeros(w.shape[0], dtype=f.dtype, device=f.device))
        z = f @ w.T + b
        num = z.gather(1, k[:, None]) - z
        den = (w[k][:, None, :] - w[None, :, :]).norm(dim=2)
    else:
        return None
    dist = num / den.clamp_min(1e-300)
    dist = torch.where(den > 0, dist, torch.full_like(dist, math.inf))
    dist.scatter_(1, k[:, None], math.inf)
    return dist.min(1).values


def _log_confidence(head: nn.Module, f64: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """float64 log-confidence of the predicted class: log κ for Gauss heads, log-softmax of
    the logits computed so that saturated probabilities keep their order, else log of the
    head's confidence rule."""
    if hasattr(head, "log_kappa"):
        return head.log_kappa(f64).gather(1, pred[:, None])[:, 0]  # type: ignore[operator,no-any-return]
    scores = head(f64)
    if isinstance(head, nn.Linear):
        z = scores.double()
        zk = z.gather(1, pred[:, None])
        rest = (z - zk).scatter(1, pred[:, None], float("-inf"))
        return -nn.functional.softplus(torch.logsumexp(rest, dim=1))
    conf = head_confidences(head, scores).double()
    return conf.gather(1, pred[:, None])[:, 0].clamp_min(1e-300).log()


def _theorem2_space(model: KmModel) -> tuple[str, torch.Tensor, bool] | None:
    """(description, centroids, augmented) for the model's head, or None when Theorem 2 does
    not apply (a head without class centroids)."""
    head = model.head
    cents = getattr(head, "centroids", None)
    if model.head_kind == "gauss" and isinstance(cents, torch.Tensor):
        return "gauss", cents.detach().double().cpu(), False
    if isinstance(head, nn.Linear) and model.head_path is not None:
        from kmtools.centroids import equidistant

        eq = equidistant(head)
        return "equidistant", eq.centroids.double(), True
    return None
