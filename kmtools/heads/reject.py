"""Reject options for prototype heads (prototype-layers paper, Sec. 7.4).

Two strategies from LVQ, both tensor-in, dataclass-out:

* **n-ball rejection** (Sec. 6.2 and 7.4): every prototype ``w_k`` spans a ball
  ``B_{r_k}(w_k) = {x : ‖x - w_k‖ < r_k}``; an input whose winning prototype's ball does
  not contain it is rejected as an outlier. :func:`fit_nball` chooses each radius so that
  a chosen share (``coverage``) of the correctly classified training points in the
  prototype's receptive field lie inside; :func:`nball_reject` applies the balls.
* **cost-based reject** (Sec. 7.4, after the misclassification/reject trade-off of its
  ref. [81]): with misclassification cost ``λ_e`` and reject cost ``λ_r``, reject when the
  confidence is below a threshold θ chosen to minimise the empirical cost
  ``λ_e · errors/N + λ_r · rejects/N`` (:func:`cost_reject`); Chow's rule
  ``θ = 1 - λ_r/λ_e`` is its Bayes-optimal value for calibrated posteriors
  (:func:`chow_threshold`); :func:`cost_reject_loss` is a smooth version of the cost
  for training a network or a threshold by gradient descent.

:func:`accuracy_reject_curve` gives accuracy on the accepted inputs against the reject
rate over every threshold of any confidence-like score (higher = more confident).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from kmtools.errors import ConfigError, DataError


def _flat(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    return t.detach().reshape(-1).cpu()


def _check_pair(confidence: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    conf = _flat(confidence, "confidence").double()
    corr = _flat(correct, "correct").bool()
    if conf.numel() != corr.numel():
        raise DataError(f"{conf.numel()} confidences but {corr.numel()} correctness flags")
    if conf.numel() == 0:
        raise DataError("no samples: cannot compute an accuracy-reject curve")
    if not torch.isfinite(conf).all():
        raise DataError("confidences contain NaN or infinite values")
    return conf, corr


@dataclass
class AccuracyRejectCurve:
    """Accuracy on accepted inputs vs reject rate, one point per distinct threshold.

    Point ``i`` accepts the inputs with ``confidence >= thresholds[i]``; the first point
    accepts everything (reject rate 0). ``auc`` is the area under accuracy(reject rate)
    by the trapezoidal rule over [0, max reject rate].
    """

    thresholds: list[float]
    reject_rate: list[float]
    accuracy: list[float]
    accepted: list[int]
    n: int
    auc: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def at_reject_rate(self, rate: float) -> tuple[float, float]:
        """``(threshold, accuracy)`` of the curve point with the largest reject rate <= ``rate``."""
        best = 0
        for i, r in enumerate(self.reject_rate):
            if r <= rate + 1e-12:
                best = i
        return self.thresholds[best], self.accuracy[best]


def accuracy_reject_curve(
    confidence: torch.Tensor, correct: torch.Tensor, *, max_points: int | None = None
) -> AccuracyRejectCurve:
    """Accuracy-reject curve of a confidence score.

    Parameters
    ----------
    confidence : (N,) score, higher = more confident (any range: softmax/κ confidence,
        ``-distance``, an n-ball margin …).
    correct : (N,) bool, whether each prediction is right.
    max_points : keep at most this many curve points (evenly spaced in reject rate, the
        first and last always kept); ``None`` keeps every distinct threshold.

    Rejecting inputs with ``confidence < θ`` for every distinct θ; tied confidences are
    accepted or rejected together, so the curve is exact.
    """
    conf, corr = _check_pair(confidence, correct)
    n = conf.numel()
    order = torch.argsort(conf, descending=True, stable=True)
    c_sorted = conf[order]
    ok_cum = torch.cumsum(corr[order].double(), 0)
    # last index of every group of equal confidences (descending order)
    last = torch.ones(n, dtype=torch.bool)
    last[:-1] = c_sorted[:-1] != c_sorted[1:]
    idx = torch.nonzero(last).flatten()
    accepted = idx + 1
    acc = ok_cum[idx] / accepted.double()
    rej = 1.0 - accepted.double() / n
    thr = c_sorted[idx]
    # ascending reject rate: reverse (idx ascends -> accepted ascends -> reject descends)
    thr, rej, acc, accepted = thr.flip(0), rej.flip(0), acc.flip(0), accepted.flip(0)
    if max_points is not None and max_points >= 2 and thr.numel() > max_points:
        keep = torch.linspace(0, thr.numel() - 1, max_points).round().long().unique()
        thr, rej, acc, accepted = thr[keep], rej[keep], acc[keep], accepted[keep]
    auc = float(torch.trapezoid(acc, rej)) if rej.numel() > 1 else 0.0
    return AccuracyRejectCurve(
        thresholds=[float(v) for v in thr],
        reject_rate=[float(v) for v in rej],
        accuracy=[float(v) for v in acc],
        accepted=[int(v) for v in accepted],
        n=int(n),
        auc=auc,
    )


@dataclass
class OperatingPoint:
    """A chosen reject threshold and what it does on the data it was chosen on."""

    threshold: float
    reject_rate: float
    accuracy: float
    error_rate: float
    cost: float
    cost_error: float
    cost_reject: float
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chow_threshold(cost_error: float, cost_reject: float) -> float:
    """Chow's rule: reject when the top posterior is below ``1 - λ_r / λ_e``."""
    _check_costs(cost_error, cost_reject)
    return 1.0 - cost_reject / cost_error


def _check_costs(cost_error: float, cost_reject: float) -> None:
    if not cost_error > 0 or not cost_reject >= 0:
        raise ConfigError("costs must satisfy λ_e > 0 and λ_r >= 0")


def operating_point(
    confidence: torch.Tensor,
    correct: torch.Tensor,
    threshold: float,
    *,
    cost_error: float = 1.0,
    cost_reject: float = 0.0,
    rule: str = "given",
) -> OperatingPoint:
    """What rejecting ``confidence < threshold`` does: rates, accuracy on accepted, cost."""
    conf, corr = _check_pair(confidence, correct)
    n = conf.numel()
    acc_mask = conf >= threshold
    n_acc = int(acc_mask.sum())
    errors = int((acc_mask & ~corr).sum())
    rej = 1.0 - n_acc / n
    accuracy = float(corr[acc_mask].double().mean()) if n_acc else 1.0
    return OperatingPoint(
        threshold=float(threshold),
        reject_rate=rej,
        accuracy=accuracy,
        error_rate=errors / n,
        cost=cost_error * errors / n + cost_reject * rej,
        cost_error=float(cost_error),
        cost_reject=float(cost_reject),
        rule=rule,
    )


def cost_reject(
    confidence: torch.Tensor, correct: torch.Tensor, *, cost_error: float = 1.0, cost_reject: float = 0.25
) -> OperatingPoint:
    """The threshold minimising the empirical cost ``λ_e·errors/N + λ_r·rejects/N`` over
    every distinct threshold (plus "reject nothing"); ties go to the smaller reject rate.

    Accepting a sample costs ``λ_e`` if it is wrong, rejecting it costs ``λ_r``: with
    ``λ_r >= λ_e`` rejecting never pays and the threshold rejects nothing.
    """
    _check_costs(cost_error, cost_reject)
    conf, corr = _check_pair(confidence, correct)
    n = conf.numel()
    order = torch.argsort(conf, descending=True, stable=True)
    c_sorted = conf[order]
    err_cum = torch.cumsum((~corr[order]).double(), 0)
    last = torch.ones(n, dtype=torch.bool)
    last[:-1] = c_sorted[:-1] != c_sorted[1:]
    idx = torch.nonzero(last).flatten()
    accepted = (idx + 1).double()
    cost = cost_error * err_cum[idx] / n + cost_reject * (1.0 - accepted / n)
    min_cost = float(cost.min())
    if cost_reject < min_cost - 1e-12:  # rejecting everything is cheapest
        thr = float(c_sorted[0]) + 1.0
    else:
        # among equal costs keep the one accepting the most (smallest reject rate)
        best = int(torch.nonzero(cost <= min_cost + 1e-12).flatten()[-1])
        thr = float(c_sorted[idx[best]])
    return operating_point(
        conf, corr, thr, cost_error=cost_error, cost_reject=cost_reject, rule="min-empirical-cost"
    )


def cost_reject_loss(
    confidence: torch.Tensor,
    correct: torch.Tensor,
    threshold: torch.Tensor | float,
    *,
    cost_error: float = 1.0,
    cost_reject: float = 0.25,
    steepness: float = 50.0,
) -> torch.Tensor:
    """Smooth expected cost for training: ``mean[ λ_e·(1-correct)·s(conf-θ) + λ_r·s(θ-conf) ]``
    with ``s(t) = sigmoid(steepness·t)`` the soft accept indicator. Differentiable in the
    confidence (so in the network) and in θ; ``correct`` may be soft (e.g. ``p̂_y``)."""
    _check_costs(cost_error, cost_reject)
    th = torch.as_tensor(threshold, dtype=confidence.dtype, device=confidence.device)
    corr = correct.to(confidence.dtype)
    accept = torch.sigmoid(steepness * (confidence - th))
    return (cost_error * (1.0 - corr) * accept + cost_reject * (1.0 - accept)).mean()


# --------------------------------------------------------------------------- n-balls


@dataclass
class NBallModel:
    """Radii of the n-balls around prototypes (Euclidean distance units)."""

    radii: torch.Tensor
    coverage: float
    support: torch.Tensor = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "radii": [float(r) for r in self.radii],
            "coverage": self.coverage,
            "support": [int(s) for s in self.support],
        }


def _as_dist(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    from kmtools.heads.rbf import squared_distances

    return squared_distances(features.detach(), prototypes.detach()).sqrt()


def fit_nball(
    features: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    prototype_labels: torch.Tensor,
    *,
    coverage: float = 0.95,
) -> NBallModel:
    """Fit one radius per prototype: the ``coverage`` quantile of the distances of the
    correctly classified training points whose winner (nearest prototype) it is, so that
    share of them lies inside its ball. A prototype that wins no correctly classified point
    gets radius 0 (everything in its cell is rejected). ``support`` = those counts."""
    if not 0.0 < coverage <= 1.0:
        raise ConfigError(f"coverage must be in (0, 1], got {coverage}")
    dist = _as_dist(features, prototypes)
    dmin, win = dist.min(dim=-1)
    y = labels.reshape(-1).to(win.device)
    pl = prototype_labels.to(win.device)
    ok = pl[win] == y
    p = prototypes.shape[0]
    radii = torch.zeros(p, dtype=torch.float32)
    support = torch.zeros(p, dtype=torch.long)
    for k in range(p):
        m = ok & (win == k)
        support[k] = int(m.sum())
        if support[k] > 0:
            radii[k] = float(torch.quantile(dmin[m].double().cpu(), coverage, interpolation="higher"))
    return NBallModel(radii=radii, coverage=float(coverage), support=support)


@dataclass
class NBallResult:
    """Per-sample n-ball decisions plus their summary (``to_dict`` gives the summary)."""

    accepted: torch.Tensor  # (N,) bool
    winner: torch.Tensor  # (N,) prototype index
    distance: torch.Tensor  # (N,) Euclidean distance to the winner
    margin: torch.Tensor  # (N,) 1 - distance / radius (> 0 inside the ball)
    prediction: torch.Tensor | None  # (N,) winner's class, when prototype labels are given
    reject_rate: float
    accuracy_accepted: float | None
    accuracy_all: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": int(self.accepted.numel()),
            "rejected": int((~self.accepted).sum()),
            "reject_rate": self.reject_rate,
            "accuracy_accepted": self.accuracy_accepted,
            "accuracy_all": self.accuracy_all,
        }


def nball_reject(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    radii: torch.Tensor | NBallModel,
    *,
    prototype_labels: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> NBallResult:
    """Reject every input outside the (closed) n-ball of its winning prototype.

    ``features`` (N, d), ``prototypes`` (P, d), ``radii`` (P,) or an :class:`NBallModel`.
    With ``prototype_labels`` the nearest-prototype prediction is returned too, and with
    ``labels`` the accuracy on the accepted inputs (1.0 if none is accepted) and on all.
    The margin ``1 - ‖f - w‖ / r`` is a confidence-like score for
    :func:`accuracy_reject_curve` (scaling every radius by one factor sweeps its curve).
    """
    r = radii.radii if isinstance(radii, NBallModel) else radii
    r = r.detach().reshape(-1).float().cpu()
    if r.numel() != prototypes.shape[0]:
        raise DataError(f"{prototypes.shape[0]} prototypes but {r.numel()} radii")
    dist = _as_dist(features, prototypes).cpu().float()
    d, win = dist.min(dim=-1)
    rw = r[win]
    accepted = d <= rw
    margin = 1.0 - d / rw.clamp_min(1e-12)
    pred = prototype_labels.reshape(-1).cpu()[win] if prototype_labels is not None else None
    acc_acc = acc_all = None
    if labels is not None:
        if pred is None:
            raise ConfigError("accuracy needs prototype_labels")
        right = pred == labels.reshape(-1).cpu()
        acc_all = float(right.double().mean()) if right.numel() else None
        acc_acc = float(right[accepted].double().mean()) if bool(accepted.any()) else 1.0
    n = max(int(accepted.numel()), 1)
    return NBallResult(
        accepted=accepted,
        winner=win,
        distance=d,
        margin=margin,
        prediction=pred,
        reject_rate=float((~accepted).sum()) / n,
        accuracy_accepted=acc_acc,
        accuracy_all=acc_all,
    )
