"""The result of :func:`kmtools.evaluate.evaluate`: per-input scalars and the metrics and
JSON derived from them (accuracy, confidence, outliers with Wilson intervals, the
recommended threshold, OOD AUROC/FPR, Theorem 2 margins, reject curves)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

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
