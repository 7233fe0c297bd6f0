"""Evaluate a classifier the way "Softmax is k-means" does (Sec. 4-5, Theorem 2, Figs. 1-3).

:func:`evaluate` streams a dataset through a :class:`~kmtools.models.KmModel` once (plus
once through each OOD source: noise images or another dataset) and keeps only a few scalars
per input, so it runs in bounded memory on any number of inputs. It reports:

* **accuracy** and **mean confidence** of the predicted class: the softmax probability for a
  softmax network, the Gauss confidence κ_k(x) = exp(-γ‖f_p(x) - C_k‖²) (Definition 1,
  Eq. 4) for a Gauss network; any other head's own ``confidences`` rule (Table 1 columns
  "accuracy" and "conf").
* **outlier rate** at the model's threshold (``model.threshold``, 1/c by default): the share
  of inputs whose predicted-class confidence is below it (Sec. 5: "a point is considered as
  an outlier if the Gauss confidence of the predicted class is smaller than 1/c"). A
  softmax confidence is never below 1/c, so a softmax network has outlier rate 0 there.
* **recommended threshold**: the 5th percentile of the predicted-class confidence over the
  correctly classified inputs, so that 95% of them stay above it.
* **OOD detection** (Sec. 5.2 / Fig. 3: "traditional networks generally classify a noise
  image with confidence higher than 0.9 ... a Gauss network reflects the outlier with
  confidences close to zero"): in-distribution inputs are the positives, noise images (or a
  second dataset) the negatives, the predicted-class confidence the score; AUROC and the
  false-positive rate at 95% true-positive rate. Noise images have the model's input shape:
  ``uniform`` draws every pixel from U[0, 1]; ``gaussian`` from N(0.5, 0.25²) clipped to
  [0, 1]. Both are in pixel space (before the model's normalisation), seeded.
* **Theorem 2 margin** per input (see :func:`theorem2_margin`), summarised by mean, median,
  min and 5th percentile; divided by a Lipschitz modulus L_p it is a certified lower bound
  on the size of an input perturbation that can change the prediction.
* the **most prototypical and most outlying** input of each class (Fig. 3).
* **reject options** on the confidence (prototype-layers paper, Sec. 7.4): the
  accuracy-reject curve, the cost-optimal threshold and Chow's rule, through
  :func:`kmtools.heads.reject.reject_curve`.

Per-sample arrays are kept in the :class:`EvalResult` for figures and reports.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from kmtools.device import autocast
from kmtools.device import resolve as resolve_device
from kmtools.errors import ConfigError, DataError
from kmtools.features import loader
from kmtools.models.core import KmModel, head_confidences
from kmtools.stats import auroc, fpr_at_tpr  # ranking metrics (ood.py uses them too)

Progress = Callable[[int, int], None]

NOISE_KINDS = ("uniform", "gaussian")
GAUSSIAN_MEAN = 0.5
GAUSSIAN_STD = 0.25
TPR_LEVEL = 0.95
RECOMMENDED_PERCENTILE = 5.0
REJECT_RATES = (0.05, 0.1, 0.2)
REJECT_CURVE_POINTS = 201


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]", "-", name) or "ood"


# --------------------------------------------------------------------------- metrics


def summary(values: Any) -> dict[str, float] | None:
    """``{mean, median, min, p05, max}`` of the finite values (None when there are none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "p05": float(np.percentile(v, 5)),
        "max": float(v.max()),
    }


def recommended_threshold(
    confidence: Any, correct: Any, percentile: float = RECOMMENDED_PERCENTILE
) -> float | None:
    """The ``percentile``-th percentile (numpy's linear interpolation) of the confidence of
    the correctly classified inputs: 95% of them lie at or above it for the default 5.
    None when no input is classified correctly."""
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if not ok.any():
        return None
    return float(np.percentile(conf[ok], percentile))


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


# --------------------------------------------------------------------------- noise


def noise_batches(
    kind: str, n: int, shape: Sequence[int], *, seed: int = 0, batch_size: int = 256
) -> Iterator[torch.Tensor]:
    """``n`` seeded noise images of ``shape`` in batches (CPU, float32, values in [0, 1]).

    ``uniform``: every value from U[0, 1]; ``gaussian``: from N(0.5, 0.25²), clipped to
    [0, 1]. The same seed gives the same images whatever the batch size.
    """
    if kind not in NOISE_KINDS:
        raise ConfigError(f"noise must be one of {', '.join(NOISE_KINDS)}, not {kind!r}")
    if n < 0:
        raise ConfigError(f"the number of noise images must be non-negative, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    shape = tuple(int(s) for s in shape)
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        if kind == "uniform":
            yield torch.rand((m, *shape), generator=g)
        else:
            yield (torch.randn((m, *shape), generator=g) * GAUSSIAN_STD + GAUSSIAN_MEAN).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- result


def _interval(name: str, k: int, n: int, count: str) -> dict[str, Any]:
    """``{name_lo, name_hi, count}``: the 95% Wilson interval of k/n beside the rate ``name``."""
    from kmtools.stats import wilson

    r = wilson(k, n)
    return {f"{name}_lo": r.lo, f"{name}_hi": r.hi, count: k}


def _empty(dtype: Any) -> np.ndarray:
    return np.zeros(0, dtype=dtype)


@dataclass
class EvalResult:
    """Per-sample scalars of one evaluation and the metrics derived from them.

    Arrays (length N = number of evaluated inputs unless noted): ``confidence`` (confidence
    of the predicted class), ``label_confidence`` (confidence of the true class),
    ``prediction``, ``label``, ``correct``, ``margin`` (Theorem 2 feature margin, or None).
    ``ood_confidence`` / ``ood_prediction`` map each OOD source (``uniform``, ``gaussian``
    or a dataset name), in the order given, to the predicted-class confidence and the
    prediction on its inputs; ``ood_source``, ``noise_confidence`` and ``noise_prediction``
    are those of the first source (None without OOD inputs). Prototypes and
    outliers (paper Fig. 3): per class with at least one input, the ``per_class`` inputs of
    highest and lowest confidence in their true class, with dataset index, confidence, label
    and image (``proto_*``, ``outlier_*``; prototypes highest first, outliers lowest first).
    """

    head_kind: str
    num_classes: int
    threshold: float
    confidence: np.ndarray
    label_confidence: np.ndarray
    prediction: np.ndarray
    label: np.ndarray
    margin: np.ndarray | None = None
    theorem2_centroids: str | None = None
    lipschitz: float | None = None
    ood_confidence: dict[str, np.ndarray] = field(default_factory=dict)
    ood_prediction: dict[str, np.ndarray] = field(default_factory=dict)
    log_confidence: np.ndarray | None = None
    ood_log_confidence: dict[str, np.ndarray] = field(default_factory=dict)
    boundary: np.ndarray | None = None
    lipschitz_is_bound: bool = False
    val_confidence: np.ndarray | None = None
    val_correct: np.ndarray | None = None
    fit_mask: np.ndarray | None = None
    threshold_fit: str = "evaluated set"
    n_boot: int = 200
    proto_index: np.ndarray = field(default_factory=lambda: _empty(np.int64))
    proto_conf: np.ndarray = field(default_factory=lambda: _empty(np.float32))
    proto_labels: np.ndarray = field(default_factory=lambda: _empty(np.int64))
    proto_images: np.ndarray = field(default_factory=lambda: _empty(np.float32))
    outlier_index: np.ndarray = field(default_factory=lambda: _empty(np.int64))
    outlier_conf: np.ndarray = field(default_factory=lambda: _empty(np.float32))
    outlier_labels: np.ndarray = field(default_factory=lambda: _empty(np.int64))
    outlier_images: np.ndarray = field(default_factory=lambda: _empty(np.float32))

    # ---- scalar metrics

    @property
    def n(self) -> int:
        return int(self.label.size)

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.prediction == self.label)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def mean_confidence(self) -> float:
        return float(self.confidence.astype(np.float64).mean())

    @property
    def outlier_rate(self) -> float:
        return float((self.confidence < self.threshold).mean())

    @property
    def recommended_threshold(self) -> float | None:
        """Fitted on the validation data, else on the seeded half ``fit_mask`` (never on the
        inputs :meth:`threshold_heldout` reports on), else on all inputs."""
        if self.val_confidence is not None and self.val_correct is not None:
            return recommended_threshold(self.val_confidence, self.val_correct)
        if self.fit_mask is not None:
            return recommended_threshold(self.confidence[self.fit_mask], self.correct[self.fit_mask])
        return recommended_threshold(self.confidence, self.correct)

    @property
    def report_mask(self) -> np.ndarray:
        """Inputs the threshold is reported on: all but the fitting half."""
        return ~self.fit_mask if self.fit_mask is not None else np.ones(self.n, dtype=bool)

    def threshold_heldout(self) -> dict[str, Any] | None:
        """The recommended threshold on inputs it was not fitted on: ``correct_kept`` (share
        of the correctly classified inputs at or above it; the target is 95%) and
        ``flagged`` (share of all inputs below it), each with a 95% Wilson interval."""
        t = self.recommended_threshold
        if t is None:
            return None
        m = self.report_mask
        conf, ok = self.confidence[m], self.correct[m]
        from kmtools.stats import wilson

        return {
            "fit_on": self.threshold_fit, "threshold": t,
            "correct_kept": wilson(int((conf[ok] >= t).sum()), int(ok.sum())).to_dict(count="kept"),
            "flagged": wilson(int((conf < t).sum()), int(m.sum())).to_dict(count="flagged"),
        }

    @property
    def ood_source(self) -> str | None:
        return next(iter(self.ood_confidence), None)

    @property
    def noise_confidence(self) -> np.ndarray | None:
        src = self.ood_source
        return self.ood_confidence[src] if src is not None else None

    @property
    def noise_prediction(self) -> np.ndarray | None:
        src = self.ood_source
        return self.ood_prediction.get(src) if src is not None else None

    def ood_metrics(self, source: str | None = None) -> dict[str, Any] | None:
        """AUROC, FPR at 95% TPR, mean confidence and outlier share of one OOD source (the
        first by default); None when it has no inputs. In-distribution inputs are the
        positives, the predicted-class confidence the score."""
        src = source if source is not None else self.ood_source
        if src is None or src not in self.ood_confidence or self.ood_confidence[src].size == 0:
            return None
        nc = self.ood_confidence[src].astype(np.float64)
        # scores compared as float64 log-confidences where available (no ties from saturation)
        pos, neg = self.confidence.astype(np.float64), nc
        if self.log_confidence is not None and src in self.ood_log_confidence:
            pos, neg = self.log_confidence, self.ood_log_confidence[src]
        from kmtools.ood import ood_metrics

        m = ood_metrics(pos, neg, n_boot=self.n_boot)
        t = self.recommended_threshold
        flagged = None
        if t is not None:  # the threshold fitted on validation data (or the fitting half), never on OOD
            from kmtools.stats import wilson

            flagged = {"threshold": t, **wilson(int((nc < t).sum()), int(nc.size)).to_dict(count="flagged")}
        return {
            "source": src,
            "n": int(nc.size),
            "score": "log_confidence" if pos is self.log_confidence else "confidence",
            "auroc": m["auroc"], "auroc_lo": m["auroc_lo"], "auroc_hi": m["auroc_hi"],
            "aupr_in": m["aupr_in"], "aupr_in_lo": m["aupr_in_lo"], "aupr_in_hi": m["aupr_in_hi"],
            "aupr_out": m["aupr_out"], "aupr_out_lo": m["aupr_out_lo"], "aupr_out_hi": m["aupr_out_hi"],
            "fpr95": m["fpr95"],
            "mean_ood_confidence": float(nc.mean()),
            "ood_outlier_rate": float((nc < self.threshold).mean()),
            "flagged_at_recommended": flagged,
        }

    @property
    def auroc(self) -> float | None:
        m = self.ood_metrics()
        return m["auroc"] if m else None

    @property
    def fpr95(self) -> float | None:
        m = self.ood_metrics()
        return m["fpr95"] if m else None

    @property
    def input_bound(self) -> np.ndarray | None:
        """Theorem 2 lower bound on ‖Δ‖ in input space: margin / L_p (None without L_p)."""
        if self.margin is None or self.lipschitz is None:
            return None
        return self.margin / float(self.lipschitz)

    # ---- serialisation

    def _ood_by_source(self) -> dict[str, Any] | None:
        out = {src: self.ood_metrics(src) for src in self.ood_confidence}
        return out or None

    def _boundary_dict(self) -> dict[str, Any] | None:
        """The exact feature-space distance to the decision boundary (see
        :func:`boundary_distance`), and divided by L_p: an input-space *estimate* unless L_p
        is a true upper bound (``input_is_bound``)."""
        if self.boundary is None:
            return None
        feat = summary(self.boundary)
        inp = summary(self.boundary / float(self.lipschitz)) if self.lipschitz is not None else None
        out: dict[str, Any] = {
            "method": "bisector of the centroids" if self.head_kind == "gauss" else "logit gap / ||w_k - w_l||",
            "space": "feature",
        }
        for key in ("mean", "median", "min", "p05"):
            out[key] = feat[key] if feat else None
        out["input"] = inp
        out["lipschitz"] = self.lipschitz
        out["input_is_bound"] = bool(self.lipschitz is not None and self.lipschitz_is_bound)
        return out

    def _theorem2_dict(self) -> dict[str, Any] | None:
        if self.margin is None:
            return None
        feat = summary(self.margin)
        inp = summary(self.input_bound) if self.input_bound is not None else None
        main = inp if inp is not None else feat
        out: dict[str, Any] = {
            "role": "corollary: a loose lower bound of the exact boundary distance (see boundary)",
            "centroids": self.theorem2_centroids,
            "space": "input" if inp is not None else "feature",
            "lipschitz": self.lipschitz,
            "lipschitz_estimate": not self.lipschitz_is_bound,
        }
        for key in ("mean", "median", "min", "p05"):
            out[key] = main[key] if main else None
        out["vacuous_share"] = float((self.margin <= 0).mean()) if self.margin.size else None
        out["feature_margin"] = feat
        out["input_bound"] = inp
        return out

    def reject_curve(self, max_points: int | None = None) -> Any:
        """The accuracy-reject curve of the predicted-class confidence
        (:func:`kmtools.heads.reject.accuracy_reject_curve`: accuracy on the accepted inputs
        against the share rejected, rejecting ``confidence < θ`` for every θ), or None when
        that module is not available or there are no inputs."""
        try:
            from kmtools.heads.reject import accuracy_reject_curve
        except ImportError:  # pragma: no cover - depends on the heads module
            return None
        if self.n == 0:
            return None
        return accuracy_reject_curve(torch.from_numpy(self.confidence.astype(np.float64)),
                                     torch.from_numpy(self.correct), max_points=max_points)

    def _reject_dict(self) -> dict[str, Any] | None:
        """Reject options on the predicted-class confidence (prototype-layers paper, Sec. 7.4,
        via :func:`kmtools.heads.reject.reject_curve`): ``auc`` of the accuracy-reject curve,
        flat gate-friendly ``acc_at_reject_05/10/20`` and ``thr_at_reject_05/10/20``, the
        ``curve`` (≤ 21 points), the cost-optimal ``operating_point`` (λ_e = 1, λ_r = 0.25)
        and Chow's rule (``chow``, for confidences in [0, 1])."""
        curve = self.reject_curve()
        if curve is None:
            return None
        out: dict[str, Any] = {"auc": float(curve.auc)}
        for rate in REJECT_RATES:
            thr, acc = curve.at_reject_rate(rate)
            tag = f"{round(rate * 100):02d}"
            out[f"acc_at_reject_{tag}"] = float(acc)
            out[f"thr_at_reject_{tag}"] = float(thr)
        try:
            from kmtools.heads.reject import reject_curve
        except ImportError:  # pragma: no cover - older heads module: the curve summary only
            return out
        doc = reject_curve(self.confidence.astype(np.float64), self.correct, reject_rates=REJECT_RATES)
        section = doc["confidence"]
        out["cost_error"], out["cost_reject"] = doc["cost_error"], doc["cost_reject"]
        for key in ("curve", "operating_point", "chow"):
            out[key] = section.get(key)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Scalar metrics, JSON-friendly. Nested objects: ``ood`` (the first OOD source),
        ``ood_by_source`` (every source), ``theorem2``, ``reject``; None where not computed."""
        ok = self.correct
        conf = self.confidence.astype(np.float64)
        return {
            "head_kind": self.head_kind,
            "n": self.n,
            "num_classes": self.num_classes,
            "accuracy": self.accuracy,
            **_interval("accuracy", int(ok.sum()), self.n, "correct"),
            "mean_confidence": self.mean_confidence,
            "mean_confidence_correct": float(conf[ok].mean()) if ok.any() else None,
            "mean_confidence_wrong": float(conf[~ok].mean()) if (~ok).any() else None,
            "threshold": float(self.threshold),
            "outlier_rate": self.outlier_rate,
            **_interval("outlier_rate", int((self.confidence < self.threshold).sum()), self.n, "outliers"),
            "recommended_threshold": self.recommended_threshold,
            "threshold_fit": self.threshold_fit,
            "threshold_heldout": self.threshold_heldout(),
            "ood": self.ood_metrics(),
            "ood_by_source": self._ood_by_source(),
            "boundary": self._boundary_dict(),
            "theorem2": self._theorem2_dict(),
            "reject": self._reject_dict(),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-sample arrays, OOD confidences, the accuracy-reject curve (at most
        :data:`REJECT_CURVE_POINTS` points) and the Fig. 3 prototypes/outliers, for ``np.savez``.

        ``noise_confidence``/``noise_prediction`` hold the first OOD source, and every source
        also appears as ``ood_<source>_confidence``/``ood_<source>_prediction`` (the source
        name with characters other than letters, digits, ``-`` and ``.`` replaced by ``-``)."""
        out: dict[str, np.ndarray] = {
            "confidence": self.confidence,
            "label_confidence": self.label_confidence,
            "correct": self.correct,
            "prediction": self.prediction,
            "label": self.label,
        }
        if self.boundary is not None:
            out["boundary"] = self.boundary
        if self.log_confidence is not None:
            out["log_confidence"] = self.log_confidence
        if self.margin is not None:
            out["margin"] = self.margin
            if self.input_bound is not None:
                out["input_bound"] = self.input_bound
        if self.noise_confidence is not None:
            out["noise_confidence"] = self.noise_confidence
        if self.noise_prediction is not None:
            out["noise_prediction"] = self.noise_prediction
        for src, conf in self.ood_confidence.items():
            tag = _safe_name(src)
            out[f"ood_{tag}_confidence"] = conf
            if src in self.ood_prediction:
                out[f"ood_{tag}_prediction"] = self.ood_prediction[src]
        curve = self.reject_curve(REJECT_CURVE_POINTS)
        if curve is not None:
            out["reject_rate"] = np.asarray(curve.reject_rate, dtype=np.float64)
            out["reject_accuracy"] = np.asarray(curve.accuracy, dtype=np.float64)
            out["reject_threshold"] = np.asarray(curve.thresholds, dtype=np.float64)
        for part in ("proto", "outlier"):
            for what in ("index", "conf", "labels", "images"):
                out[f"{part}_{what}"] = getattr(self, f"{part}_{what}")
        return out


# --------------------------------------------------------------------------- streaming


class _Extremes:
    """Running top-k (prototypes) and bottom-k (outliers) per class, with their images.

    Holds at most 2·k images per class; every stored image is a copy, never a view of a
    batch (which would keep the whole batch alive). Each batch is merged with a handful of
    whole-batch tensor operations (no loop over classes). Ties keep the earlier input."""

    def __init__(self, k: int) -> None:
        self.k = k
        # (confidence, dataset index, label, image) of the kept inputs, grouped by label
        self.top: tuple[torch.Tensor, ...] | None = None
        self.bottom: tuple[torch.Tensor, ...] | None = None

    def _keep(self, conf: torch.Tensor, labels: torch.Tensor, descending: bool) -> torch.Tensor:
        """Row indices of the first k per label by ``conf`` (stable), grouped by ascending label."""
        order = torch.sort(conf, descending=descending, stable=True).indices
        order = order[torch.sort(labels[order], stable=True).indices]
        lab = labels[order]
        pos = torch.arange(len(lab))
        first = torch.ones(len(lab), dtype=torch.bool)
        first[1:] = lab[1:] != lab[:-1]
        group_start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values
        return order[pos - group_start < self.k]

    def _merge(self, store: tuple[torch.Tensor, ...] | None, conf: torch.Tensor, labels: torch.Tensor,
               idx: torch.Tensor, x: torch.Tensor, descending: bool) -> tuple[torch.Tensor, ...]:
        rows = self._keep(conf, labels, descending)
        imgs = x[rows.to(x.device)].detach().float().cpu().clone()
        cand = (conf[rows], idx[rows], labels[rows], imgs)
        if store is None:
            return cand
        both = tuple(torch.cat([a, b]) for a, b in zip(store, cand, strict=True))
        keep = self._keep(both[0], both[2], descending)
        return tuple(t[keep] for t in both)

    def update(self, conf: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, x: torch.Tensor) -> None:
        """``conf``, ``labels``, ``idx``: (B,) on the CPU; ``x``: the batch (any device)."""
        if self.k <= 0 or len(labels) == 0:
            return
        conf, labels, idx = conf.float(), labels.long(), idx.long()
        self.top = self._merge(self.top, conf, labels, idx, x, True)
        self.bottom = self._merge(self.bottom, conf, labels, idx, x, False)

    @staticmethod
    def arrays(store: tuple[torch.Tensor, ...] | None, shape: Sequence[int]) -> tuple[np.ndarray, ...]:
        """``(index, confidence, label, image)`` arrays, classes ascending."""
        if store is None:
            return (_empty(np.int64), _empty(np.float32), _empty(np.int64),
                    np.zeros((0, *shape), dtype=np.float32))
        conf, idx, labels, imgs = store
        return idx.numpy(), conf.numpy(), labels.numpy(), imgs.numpy()


def _as_dataset(data: Any) -> tuple[Dataset[Any], str | None, tuple[int, ...] | None]:
    """``(dataset, name, input_shape)`` of a Dataset or a kmtools DataInfo."""
    inner = getattr(data, "dataset", None)
    if inner is not None and hasattr(data, "input_shape"):
        return inner, str(getattr(data, "name", "dataset")), tuple(data.input_shape)
    return data, None, None


def _ood_sources(ood: Any, n_noise: int) -> list[tuple[str, Any, int]]:
    """``[(name, "uniform"|"gaussian"|Dataset, number of inputs)]`` from ``evaluate``'s ``ood``.

    Names are the noise kind, the DataInfo's name, or ``dataset`` for a bare Dataset;
    a repeated name gets a suffix (``dataset-2``)."""
    items = list(ood) if isinstance(ood, (list, tuple)) else ([] if ood is None else [ood])
    out: list[tuple[str, Any, int]] = []
    for item in items:
        src: Any
        if isinstance(item, str):
            key = item.strip().lower()
            if key not in NOISE_KINDS:
                raise ConfigError(
                    f"ood must be {' or '.join(NOISE_KINDS)}, a Dataset, or None; got {item!r}"
                )
            if n_noise < 0:
                raise ConfigError(f"n_noise must be non-negative, got {n_noise}")
            name, src, n = key, key, int(n_noise)
        else:
            src, ds_name, _ = _as_dataset(item)
            name, n = ds_name or "dataset", len(src)
        taken = {o[0] for o in out}
        base, k = name, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        out.append((name, src, n))
    return out


def _predict(head: nn.Module, f: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The predicted class: argmax of the head's smooth decision scores where it has them
    (``decision_scores``, else ``log_kappa`` for a Gauss head: the nearest centroid even when
    every κ underflows to 0), else argmax of the scores."""
    for name in ("decision_scores", "log_kappa"):
        fn = getattr(head, name, None)
        if callable(fn):
            out: torch.Tensor = fn(f)
            return out.argmax(1)
    return scores.argmax(1)


@torch.no_grad()
def _forward(
    model: KmModel, x: torch.Tensor, device: torch.device, amp: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features float32, confidences (n, c) float32, predictions) for one batch. The backbone
    may run under bf16 autocast; the head always runs in float32."""
    with autocast(device, amp):
        f = model.features(x)
    f = f.float()
    scores = model.head(f).float()
    conf = head_confidences(model.head, scores).float()
    return f, conf, _predict(model.head, f, scores)


def _confidence_correct(model: KmModel, data: Any, batch_size: int, dev: torch.device, amp: bool,
                        workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted-class confidence and correctness on validation data (for the threshold)."""
    dataset, _, _ = _as_dataset(data)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("the validation data is empty")
    confs, oks = [], []
    for x, y in loader(dataset, batch_size, dev, workers):
        _, conf, pred = _forward(model, x.to(dev), dev, amp)
        confs.append(conf.gather(1, pred[:, None])[:, 0].cpu().numpy())
        oks.append((pred.cpu() == torch.as_tensor(y).long()).numpy())
    return np.concatenate(confs).astype(np.float32), np.concatenate(oks)


def evaluate(
    model: KmModel,
    data: Dataset[Any] | Any,
    *,
    ood: Dataset[Any] | Any | str | Sequence[Any] | None = None,
    n_noise: int = 1000,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    seed: int = 0,
    amp: bool = False,
    progress: Progress | None = None,
    lipschitz: float | None = None,
    per_class: int = 1,
    workers: int = 0,
    val_data: Dataset[Any] | Any | None = None,
    val_seed: int = 0,
    lipschitz_is_bound: bool = False,
    n_boot: int = 200,
) -> EvalResult:
    """Evaluate ``model`` on ``data`` (and OOD inputs) in one streaming pass.

    Args:
        model: any KmModel (softmax, Gauss or another head with a ``confidences`` rule).
        data: a Dataset of ``(x, y)`` in pixel space, or a kmtools ``DataInfo``.
        ood: ``"uniform"`` / ``"gaussian"`` for ``n_noise`` noise images of the model's input
            shape (see :func:`noise_batches`), a second Dataset/DataInfo (all its inputs are
            used; labels ignored), a list or tuple of several of these (each scored against
            ``data`` on its own), or None for no OOD evaluation.
        n_noise: number of noise images.
        batch_size, device, amp, workers: as for :func:`kmtools.features.extract`.
        seed: seed of the noise images.
        progress: ``progress(done, total)`` over in-distribution plus OOD inputs.
        lipschitz: a Lipschitz modulus L_p of x ↦ f_p(x) (pixel space, normalisation
            included); with it the Theorem 2 margin is also reported as an input-space bound.
        per_class: prototypes and outliers kept per class (paper Fig. 3).
        val_data: validation inputs the recommended threshold is fitted on; without them it
            is fitted on a seeded half of ``data`` (``val_seed``) and reported on the other.
        lipschitz_is_bound: ``lipschitz`` is a true upper bound (input-space distances are
            then bounds; otherwise they are labelled estimates).
        n_boot: bootstrap resamples for the OOD metrics' intervals (0: none).

    Theorem 2 is evaluated with the Gauss head's centroids C for a Gauss network, and with
    the equidistant centroids Z of Theorem 1 (bias-augmented features [f(x), 1], which have
    the same Lipschitz modulus as f) for a softmax network; other heads get no margin.

    Only per-input scalars and at most 2·``per_class`` images per class are kept; inputs
    are never accumulated.
    """
    if batch_size <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    if lipschitz is not None and not (math.isfinite(float(lipschitz)) and float(lipschitz) > 0):
        raise ConfigError(f"the Lipschitz modulus must be a positive number, got {lipschitz}")
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    dataset, _, data_shape = _as_dataset(data)
    total_in = len(dataset)  # type: ignore[arg-type]
    if total_in == 0:
        raise DataError("the dataset is empty: nothing to evaluate")

    sources = _ood_sources(ood, n_noise)
    n_ood = sum(n for _, _, n in sources)

    model = model.to(dev).eval()
    c = model.num_classes
    space = _theorem2_space(model) if c >= 2 else None
    cents = space[1].to(dev) if space is not None else None
    total = total_in + n_ood

    import copy

    head64 = copy.deepcopy(model.head).double()
    logs: list[np.ndarray] = []
    bounds: list[np.ndarray] = []
    confs: list[np.ndarray] = []
    lconfs: list[np.ndarray] = []
    preds: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    margins: list[np.ndarray] = []
    extremes = _Extremes(per_class)
    shape: tuple[int, ...] | None = model.input_shape or data_shape
    done = 0
    for x, y in loader(dataset, batch_size, dev, workers):
        x = x.to(dev, non_blocking=True)
        y = torch.as_tensor(y).long()
        if shape is None:
            shape = tuple(x.shape[1:])
        f, conf, pred = _forward(model, x, dev, amp)
        if not bool(torch.isfinite(f).all()):
            raise DataError("features contain NaN/Inf: check the input data and normalisation (--mean/--std)")
        yd = y.to(dev)
        if int(y.min()) < 0 or int(y.max()) >= conf.shape[1]:
            raise DataError(
                f"labels must lie in 0..{conf.shape[1] - 1}, found {int(y.min())}..{int(y.max())}"
            )
        pc = conf.gather(1, pred[:, None]).squeeze(1)
        lc = conf.gather(1, yd[:, None]).squeeze(1)
        with torch.no_grad():
            f64 = f.double()
            logs.append(_log_confidence(head64, f64, pred).cpu().numpy())
            bd = boundary_distance(f64, head64, pred) if c >= 2 else None
        if bd is not None:
            bounds.append(bd.cpu().numpy())
        confs.append(pc.cpu().numpy())
        lconfs.append(lc.cpu().numpy())
        preds.append(pred.cpu().numpy())
        labels.append(y.numpy())
        if space is not None and cents is not None:
            fs = torch.cat([f, torch.ones(len(f), 1, device=f.device)], 1) if space[2] else f
            margins.append(theorem2_margin(fs, cents, pred).cpu().numpy())
        idx = torch.arange(done, done + len(y))
        extremes.update(lc.cpu(), y, idx, x)
        done += len(y)
        if progress:
            progress(done, total)
    x = f = conf = None  # type: ignore[assignment]  # let the last batch go before the OOD pass

    ood_conf: dict[str, np.ndarray] = {}
    ood_pred: dict[str, np.ndarray] = {}
    ood_log: dict[str, np.ndarray] = {}
    for name, src, n_src in sources:
        batches: Any
        if isinstance(src, str):
            if shape is None:  # pragma: no cover - shape is known after one batch
                raise ConfigError("cannot make noise images: the model's input shape is unknown")
            batches = noise_batches(src, n_src, shape, seed=seed, batch_size=batch_size)
        else:
            batches = (b[0] for b in loader(src, batch_size, dev, workers))
        nc, npd, nlog = [], [], []
        for xb in batches:
            xb = xb.to(dev, non_blocking=True)
            if shape is not None and tuple(xb.shape[1:]) != tuple(shape):
                raise DataError(
                    f"OOD inputs ({name}) have shape {tuple(xb.shape[1:])} but the model expects {tuple(shape)}"
                )
            fo, conf, pred = _forward(model, xb, dev, amp)
            nc.append(conf.gather(1, pred[:, None]).squeeze(1).cpu().numpy())
            with torch.no_grad():
                nlog.append(_log_confidence(head64, fo.double(), pred).cpu().numpy())
            npd.append(pred.cpu().numpy())
            done += len(xb)
            if progress:
                progress(done, total)
        ood_conf[name] = np.concatenate(nc).astype(np.float32) if nc else _empty(np.float32)
        ood_pred[name] = np.concatenate(npd).astype(np.int64) if npd else _empty(np.int64)
        ood_log[name] = np.concatenate(nlog).astype(np.float64) if nlog else _empty(np.float64)

    val_conf = val_ok = fit_mask = None
    fit = "evaluated set (too few inputs to split)"
    if val_data is not None:
        val_conf, val_ok = _confidence_correct(model, val_data, batch_size, dev, amp, workers)
        fit = "validation data"
    elif done >= 2:
        fit_mask = np.zeros(total_in, dtype=bool)
        fit_mask[np.random.default_rng(val_seed).permutation(total_in)[: total_in // 2]] = True
        fit = f"seeded half of the evaluated set (seed {val_seed}); reported on the other half"
    img_shape = tuple(shape or ())
    p_idx, p_conf, p_lab, p_img = extremes.arrays(extremes.top, img_shape)
    o_idx, o_conf, o_lab, o_img = extremes.arrays(extremes.bottom, img_shape)
    return EvalResult(
        head_kind=model.head_kind,
        num_classes=c,
        threshold=float(model.threshold),
        confidence=np.concatenate(confs).astype(np.float32),
        label_confidence=np.concatenate(lconfs).astype(np.float32),
        prediction=np.concatenate(preds).astype(np.int64),
        label=np.concatenate(labels).astype(np.int64),
        margin=np.concatenate(margins).astype(np.float64) if margins else None,
        theorem2_centroids=space[0] if space is not None else None,
        lipschitz=float(lipschitz) if lipschitz is not None else None,
        ood_confidence=ood_conf,
        ood_prediction=ood_pred,
        log_confidence=np.concatenate(logs).astype(np.float64),
        ood_log_confidence=ood_log,
        boundary=np.concatenate(bounds).astype(np.float64) if bounds else None,
        lipschitz_is_bound=bool(lipschitz_is_bound),
        val_confidence=val_conf,
        val_correct=val_ok,
        fit_mask=fit_mask,
        threshold_fit=fit,
        n_boot=n_boot,
        proto_index=p_idx, proto_conf=p_conf, proto_labels=p_lab, proto_images=p_img,
        outlier_index=o_idx, outlier_conf=o_conf, outlier_labels=o_lab, outlier_images=o_img,
    )


__all__ = [
    "GAUSSIAN_MEAN",
    "GAUSSIAN_STD",
    "NOISE_KINDS",
    "EvalResult",
    "auroc",
    "boundary_distance",
    "evaluate",
    "fpr_at_tpr",
    "noise_batches",
    "recommended_threshold",
    "summary",
    "theorem2_margin",
]
