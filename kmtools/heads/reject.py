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

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

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
    accepts everything (reject rate 0). Tied confidences are accepted or rejected together,
    so every point is an operating point a threshold can realise.

    ``auc`` is the mean accuracy over the reject rates ``0, 1/N, …, (N-1)/N`` (accept the
    ``N, N-1, …, 1`` most confident inputs), with ties broken in expectation: accepting
    part of a group of equal confidences counts its correct share pro rata. It lies in
    [0, 1], equals the plain accuracy for a score that ranks nothing (all confidences
    equal), and is highest when every error is less confident than every correct input,
    so it compares heads whatever their range or saturation of confidences.
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
    auc = _expected_auc(ok_cum[idx], accepted, n)
    acc = ok_cum[idx] / accepted.double()
    rej = 1.0 - accepted.double() / n
    thr = c_sorted[idx]
    # ascending reject rate: reverse (idx ascends -> accepted ascends -> reject descends)
    thr, rej, acc, accepted = thr.flip(0), rej.flip(0), acc.flip(0), accepted.flip(0)
    if max_points is not None and max_points >= 2 and thr.numel() > max_points:
        keep = torch.linspace(0, thr.numel() - 1, max_points).round().long().unique()
        thr, rej, acc, accepted = thr[keep], rej[keep], acc[keep], accepted[keep]
    return AccuracyRejectCurve(
        thresholds=[float(v) for v in thr],
        reject_rate=[float(v) for v in rej],
        accuracy=[float(v) for v in acc],
        accepted=[int(v) for v in accepted],
        n=int(n),
        auc=auc,
    )


def _expected_auc(correct_at_end: torch.Tensor, accepted_at_end: torch.Tensor, n: int) -> float:
    """Mean over a = 1..n accepted inputs of the expected accuracy when the a most confident
    are accepted, ties broken at random (linear interpolation of the correct count inside a
    group of equal confidences). Inputs: cumulative correct and accepted counts at the end
    of each tie group, most confident group first."""
    a_end = accepted_at_end.double()
    a_start = torch.cat([a_end.new_zeros(1), a_end[:-1]])
    c_end = correct_at_end.double()
    c_start = torch.cat([c_end.new_zeros(1), c_end[:-1]])
    sizes = (a_end - a_start).long()
    group = torch.repeat_interleave(torch.arange(a_end.numel()), sizes)
    a = torch.arange(1, n + 1, dtype=torch.float64)
    frac = (a - a_start[group]) / (a_end[group] - a_start[group])
    correct = c_start[group] + frac * (c_end[group] - c_start[group])
    return float((correct / a).mean())


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
    """Fit one radius per prototype (Sec. 7.4, first strategy): the smallest radius whose
    closed ball holds at least the share ``coverage`` of the correctly classified training
    points that the prototype wins (nearest prototype, WTA rule), i.e. the
    ``⌈coverage · m⌉``-th smallest of their ``m`` distances. A prototype that wins no
    correctly classified point gets radius 0 (everything in its cell is rejected).
    ``support`` = those counts ``m``."""
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
            ds = torch.sort(dmin[m].double().cpu()).values
            rank = min(max(math.ceil(coverage * ds.numel() - 1e-9), 1), ds.numel())
            radii[k] = float(ds[rank - 1])
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


# --------------------------------------------------------------------------- trained threshold


def fit_reject_threshold(
    confidence: torch.Tensor,
    correct: torch.Tensor,
    *,
    cost_error: float = 1.0,
    cost_reject: float = 0.25,
    steepness: float | None = None,
    steps: int = 300,
    lr: float | None = None,
) -> OperatingPoint:
    """Train the reject threshold θ by gradient descent (Adam) on the smooth cost
    :func:`cost_reject_loss` (Sec. 7.4, second strategy: the network "learns to optimize a
    trade-off between misclassifying and rejecting inputs" under costs ``λ_e``, ``λ_r``).

    ``steepness`` of the soft accept indicator defaults to ``20 / std(confidence)`` and
    ``lr`` to ``0.02 · std(confidence)``, so both follow the score's scale; θ starts at the
    confidence quantile equal to the error rate. Returns the exact operating point of the
    trained θ (rule ``"trained-smooth-cost"``); :func:`cost_reject` gives the exact
    minimiser of the empirical cost to compare with.
    """
    _check_costs(cost_error, cost_reject)
    conf, corr = _check_pair(confidence, correct)
    scale = float(conf.std()) if conf.numel() > 1 else 0.0
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    k = steepness if steepness is not None else 20.0 / scale
    step = lr if lr is not None else 0.02 * scale
    err = float((~corr).double().mean())
    start = float(torch.quantile(conf, min(max(err, 0.0), 1.0)))
    theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=step)
    for _ in range(max(int(steps), 0)):
        opt.zero_grad(set_to_none=True)
        loss = cost_reject_loss(conf, corr.double(), theta, cost_error=cost_error, cost_reject=cost_reject,
                                steepness=k)
        loss.backward()
        opt.step()
    return operating_point(conf, corr, float(theta.detach()), cost_error=cost_error, cost_reject=cost_reject,
                           rule="trained-smooth-cost")


# --------------------------------------------------------------------------- one JSON document


def _as_1d(v: Any) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        v = torch.from_numpy(np.ascontiguousarray(v))
    return torch.as_tensor(v).detach().reshape(-1).cpu()


def _curve_doc(curve: AccuracyRejectCurve) -> dict[str, Any]:
    return {
        "reject_rate": curve.reject_rate,
        "accuracy": curve.accuracy,
        "threshold": curve.thresholds,
        "accepted": curve.accepted,
    }


def _score_section(
    conf: torch.Tensor, corr: torch.Tensor, cost_error: float, cost_reject_: float, max_points: int | None,
    reject_rates: tuple[float, ...],
) -> dict[str, Any]:
    full = accuracy_reject_curve(conf, corr)
    shown = accuracy_reject_curve(conf, corr, max_points=max_points)
    out: dict[str, Any] = {"auc": full.auc, "curve": _curve_doc(shown)}
    out["at_reject_rate"] = {
        f"{rate:g}": dict(zip(("threshold", "accuracy"), full.at_reject_rate(rate), strict=True))
        for rate in reject_rates
    }
    best = cost_reject(conf, corr, cost_error=cost_error, cost_reject=cost_reject_)
    out["operating_point"] = best.to_dict()
    c = conf.double()
    if bool((c >= 0).all()) and bool((c <= 1).all()):
        thr = chow_threshold(cost_error, cost_reject_)
        out["chow"] = operating_point(c, corr, thr, cost_error=cost_error, cost_reject=cost_reject_,
                                      rule="chow").to_dict()
    return out


def reject_curve(
    scores_or_model: Any,
    correct_or_data: Any,
    *,
    train: Any = None,
    coverage: float = 0.95,
    cost_error: float = 1.0,
    cost_reject: float = 0.25,
    max_points: int | None = 21,
    reject_rates: tuple[float, ...] = (0.05, 0.1, 0.2),
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Accuracy-reject curves and chosen operating points as one JSON-able dict.

    Two ways to call it:

    * ``reject_curve(confidence, correct)``: ``confidence`` (N,) of the predicted class
      (any score, higher = more confident; tensor or numpy) and ``correct`` (N,) bool. The
      result has a ``"confidence"`` section only.
    * ``reject_curve(model, data, train=train_data)``: a :class:`~kmtools.models.KmModel`
      and a Dataset (or ``DataInfo``). Predictions are the argmax of the head's decision
      scores (as ``kmtools evaluate``), confidences the head's own ``confidences``. With
      ``train`` the n-balls (Sec. 7.4, first strategy) are fitted on the training features
      at ``coverage`` around the head's prototypes (class means of the training features
      for a softmax head) and an ``"nball"`` section is added: its operating point at the
      fitted radii and the curve of the margin ``1 - ‖f - w‖ / r`` (scaling all radii).

    Each section holds ``auc`` (see :class:`AccuracyRejectCurve`), ``curve`` (at most
    ``max_points`` points: ``reject_rate``, ``accuracy``, ``threshold``, ``accepted``),
    ``at_reject_rate`` (accuracy at the largest reject rate ≤ each of ``reject_rates``),
    ``operating_point``: the threshold minimising ``λ_e·errors/N + λ_r·rejects/N``
    (:func:`cost_reject`), and, for scores in [0, 1], ``chow``: Chow's rule
    ``θ = 1 - λ_r/λ_e``. The n-ball section's ``operating_point`` is the fitted balls
    themselves (``rule: "nball"``, threshold 0 on the margin) and its ``min_cost_point``
    the cost-optimal margin threshold.
    """
    if not isinstance(scores_or_model, nn.Module):
        conf = _as_1d(scores_or_model).double()
        corr = _as_1d(correct_or_data).bool()
        conf, corr = _check_pair(conf, corr)
        return {
            "n": int(conf.numel()),
            "accuracy": float(corr.double().mean()),
            "cost_error": float(cost_error),
            "cost_reject": float(cost_reject),
            "confidence": _score_section(conf, corr, cost_error, cost_reject, max_points, reject_rates),
        }
    return _model_reject_curve(
        scores_or_model, correct_or_data, train=train, coverage=coverage, cost_error=cost_error,
        cost_reject=cost_reject, max_points=max_points, reject_rates=reject_rates, batch_size=batch_size,
        device=device,
    )


def _dataset(data: Any) -> Any:
    inner = getattr(data, "dataset", None)
    return inner if inner is not None and hasattr(data, "input_shape") else data


def _model_reject_curve(
    model: nn.Module, data: Any, *, train: Any, coverage: float, cost_error: float, cost_reject: float,
    max_points: int | None, reject_rates: tuple[float, ...], batch_size: int,
    device: str | torch.device | None,
) -> dict[str, Any]:
    from kmtools.device import resolve
    from kmtools.features import extract
    from kmtools.heads import decision_scores, head_prototypes
    from kmtools.models.core import head_confidences, head_kind

    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module) or not hasattr(model, "features"):
        raise ConfigError("reject_curve needs a KmModel (normalize -> backbone -> head) or confidences")
    dev = resolve(device) if device is not None else torch.device("cpu")
    te = extract(model, _dataset(data), batch_size=batch_size, device=dev)  # type: ignore[arg-type]
    first = next(iter(head.state_dict().values()), None)
    hdev = first.device if first is not None else torch.device("cpu")
    with torch.no_grad():
        f = te.features.to(hdev).float()
        conf_all = head_confidences(head, head(f)).float()
        pred = decision_scores(head, f).argmax(1)
    conf = conf_all.gather(1, pred[:, None]).squeeze(1).cpu().double()
    y = te.labels.reshape(-1).cpu().long()
    corr = pred.cpu() == y
    doc: dict[str, Any] = {
        "n": int(y.numel()),
        "accuracy": float(corr.double().mean()),
        "head_kind": head_kind(head),
        "cost_error": float(cost_error),
        "cost_reject": float(cost_reject),
        "confidence": _score_section(conf, corr, cost_error, cost_reject, max_points, reject_rates),
    }
    if train is None:
        return doc
    tr = extract(model, _dataset(train), batch_size=batch_size, device=dev)  # type: ignore[arg-type]
    ftr, ytr = tr.features.float().cpu(), tr.labels.reshape(-1).cpu().long()
    if isinstance(head, nn.Linear):
        from kmtools.centroids import class_means

        protos = class_means(ftr, ytr, int(head.out_features)).float()
        plabels = torch.arange(head.out_features)
        source = "class means of the training features"
    else:
        protos, plabels = head_prototypes(head)
        protos, plabels = protos.float().cpu(), plabels.cpu()
        source = "head prototypes"
    balls = fit_nball(ftr, ytr, protos, plabels, coverage=coverage)
    res = nball_reject(f.cpu(), protos, balls, prototype_labels=plabels)
    section = _score_section(res.margin.double(), corr, cost_error, cost_reject, max_points, reject_rates)
    section.pop("chow", None)
    section["min_cost_point"] = section["operating_point"]
    section["operating_point"] = operating_point(res.margin.double(), corr, 0.0, cost_error=cost_error,
                                                 cost_reject=cost_reject, rule="nball").to_dict()
    r = balls.radii
    section.update(
        coverage=float(coverage),
        prototypes=int(protos.shape[0]),
        prototype_source=source,
        radius={"min": float(r.min()), "median": float(r.median()), "max": float(r.max())},
        train_n=int(ytr.numel()),
    )
    doc["nball"] = section
    return doc
