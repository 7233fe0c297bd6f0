"""Uncertainty of rates and paired comparisons: every reported rate carries its count, n and
a 95% interval; two models on the same inputs get a paired test.

* :func:`wilson` – Wilson score interval of a binomial proportion (Wilson, 1927), the
  interval ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`` gives.
* :func:`mcnemar` – McNemar's exact test: a two-sided binomial test on the discordant pairs.
* :func:`paired_diff` – difference of two paired proportions with a Wilson-type interval
  (Newcombe 1998, method 10), for "accuracy changed by Δ points".
* :func:`bootstrap` – percentile bootstrap interval of any statistic (AUROC, AUPR, ECE).
* :func:`auroc`, :func:`fpr_at_tpr` – ranking metrics (Mann-Whitney AUROC, FPR at a TPR)
  shared by :mod:`kmtools.evaluate` and :mod:`kmtools.ood`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kmtools.errors import ConfigError, DataError

Z95 = 1.959963984540054


@dataclass
class Rate:
    """``k`` of ``n`` with a 95% Wilson interval. ``rate`` is ``None`` when ``n == 0``."""

    k: int
    n: int
    rate: float | None
    lo: float | None
    hi: float | None

    def to_dict(self, count: str = "k") -> dict[str, Any]:
        """``{"rate", "rate_lo", "rate_hi", <count>, "n"}``; attacks name the count ``fooled``."""
        return {"rate": self.rate, "rate_lo": self.lo, "rate_hi": self.hi, count: self.k, "n": self.n}

    def text(self, digits: int = 1) -> str:
        """``"12.5% (9.0–17.1%, 25/200)"``; ``"–"`` when n is 0."""
        if self.rate is None or self.lo is None or self.hi is None:
            return "–"
        f = f"{{:.{digits}f}}"
        return f"{f.format(100 * self.rate)}% ({f.format(100 * self.lo)}–{f.format(100 * self.hi)}%, {self.k}/{self.n})"


def wilson(k: int, n: int, z: float = Z95) -> Rate:
    """Wilson score interval for ``k`` successes in ``n`` trials."""
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Rate(0, 0, None, None, None)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return Rate(k, n, p, lo, hi)


@dataclass
class McNemar:
    """Paired outcomes of models A and B on the same inputs.

    ``b``: A yes, B no; ``c``: A no, B yes; ``p_value``: exact two-sided binomial test of
    ``b`` against Binomial(b + c, ½) (1.0 when there are no discordant pairs).
    """

    n: int
    both: int
    b: int
    c: int
    neither: int
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "both": self.both, "only_a": self.b, "only_b": self.c, "neither": self.neither,
                "p_value": self.p_value, "significant": self.significant}


def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` in Binomial(n, ½) (doubled smaller tail, capped at 1)."""
    if n == 0:
        return 1.0
    from scipy.stats import binom

    tail = binom.cdf(min(k, n - k), n, 0.5)
    return float(min(1.0, 2 * tail))


def mcnemar(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> McNemar:
    """McNemar's exact test for paired binary outcomes ``a`` and ``b``."""
    x = np.asarray(a, dtype=bool).ravel()
    y = np.asarray(b, dtype=bool).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired outcomes need equal lengths, got {x.size} and {y.size}")
    both = int((x & y).sum())
    only_a = int((x & ~y).sum())
    only_b = int((~x & y).sum())
    neither = int((~x & ~y).sum())
    return McNemar(int(x.size), both, only_a, only_b, neither, binom_two_sided(only_a, only_a + only_b))


@dataclass
class PairedDiff:
    """``p_b - p_a`` for paired proportions with a 95% interval (Newcombe's method 10)."""

    diff: float | None
    lo: float | None
    hi: float | None
    test: McNemar

    def to_dict(self) -> dict[str, Any]:
        return {"diff": self.diff, "diff_lo": self.lo, "diff_hi": self.hi, **self.test.to_dict()}


def paired_diff(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray, z: float = Z95) -> PairedDiff:
    """Difference of the success rates of ``b`` and ``a`` on the same inputs, with interval."""
    t = mcnemar(a, b)
    n = t.n
    if n == 0:
        return PairedDiff(None, None, None, t)
    p1 = (t.both + t.b) / n  # a's rate
    p2 = (t.both + t.c) / n  # b's rate
    w1, w2 = wilson(t.both + t.b, n, z), wilson(t.both + t.c, n, z)
    assert w1.lo is not None and w1.hi is not None and w2.lo is not None and w2.hi is not None
    l1, u1, l2, u2 = w1.lo, w1.hi, w2.lo, w2.hi
    # correlation correction (Newcombe 1998, eq. for method 10)
    denom = math.sqrt((t.both + t.b) * (t.c + t.neither) * (t.both + t.c) * (t.b + t.neither))
    num = t.both * t.neither - t.b * t.c
    phi = 0.0 if denom == 0 else (max(num - n / 2, 0) if num > 0 else num) / denom
    d = p2 - p1
    lo = d - math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    hi = d + math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return PairedDiff(d, max(-1.0, lo), min(1.0, hi), t)


def ratio_interval(a: Rate, b: Rate, z: float = Z95) -> tuple[float | None, float | None, float | None]:
    """``a.rate / b.rate`` with a 95% interval from the log-ratio's delta-method variance
    (Katz et al. 1978). Treats the two rates as independent, which is conservative for
    positively correlated paired outcomes. ``None`` where a rate is 0 or undefined."""
    if not a.n or not b.n or not a.k or not b.k:
        return None, None, None
    r = (a.k / a.n) / (b.k / b.n)
    se = math.sqrt(1 / a.k - 1 / a.n + 1 / b.k - 1 / b.n)
    return r, r * math.exp(-z * se), r * math.exp(z * se)


def bootstrap(
    stat: Callable[..., float], *arrays: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float | None, float | None]:
    """``stat(*arrays)`` and its percentile-bootstrap interval (rows resampled jointly)."""
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    value = float(stat(*arrs))
    if n < 2:
        return value, None, None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            v = float(stat(*(a[idx] for a in arrs)))
        except ValueError:  # e.g. one class only in the resample
            continue
        if math.isfinite(v):
            vals.append(v)
    if len(vals) < n_boot // 2:
        return value, None, None
    q = (1 - level) / 2
    return value, float(np.quantile(vals, q)), float(np.quantile(vals, 1 - q))


# --------------------------------------------------------------------------- ranking


def auroc(positive: Any, negative: Any) -> float:
    """Area under the ROC curve with ``positive`` scoring higher (ties count 1/2).

    The Mann-Whitney U statistic with mid-ranks for ties, divided by P·N; equal to
    ``sklearn.metrics.roc_auc_score`` with the positives labelled 1.
    """
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise DataError("AUROC needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each group of ties
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def fpr_at_tpr(positive: Any, negative: Any, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold whose true-positive rate is ≥ ``tpr``.

    An input is called positive when its score is ≥ t. t is the ⌈tpr·P⌉-th largest positive
    score (the largest t keeping at least ``tpr`` of the positives); the result is the share
    of negatives scoring ≥ t, i.e. ``fpr[argmax(tpr_curve >= tpr)]`` on sklearn's
    ``roc_curve(..., drop_intermediate=False)``.
    """
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise DataError("FPR at a TPR needs at least one positive and one negative score")
    if not 0.0 < tpr <= 1.0:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    k = min(max(math.ceil(tpr * pos.size - 1e-9), 1), pos.size)
    t = np.sort(pos)[::-1][k - 1]
    return float((neg >= t).mean())
