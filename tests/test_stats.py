"""kmtools.stats against references: scipy's Wilson interval and exact binomial test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from kmtools.stats import bootstrap, mcnemar, paired_diff, ratio_interval, wilson


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (27, 100), (1, 400), (199, 200)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    r = wilson(k, n)
    ci = binomtest(k, n).proportion_ci(method="wilson")
    assert r.rate == k / n
    assert r.lo == pytest.approx(ci.low, abs=1e-12) and r.hi == pytest.approx(ci.high, abs=1e-12)
    d = r.to_dict(count="fooled")
    assert d == {"rate": k / n, "rate_lo": r.lo, "rate_hi": r.hi, "fooled": k, "n": n}


def test_wilson_edge_cases() -> None:
    assert wilson(0, 0).rate is None and wilson(0, 0).text() == "–"
    with pytest.raises(ValueError):
        wilson(3, 2)
    assert wilson(25, 200).text() == "12.5% (8.6–17.8%, 25/200)"


def test_mcnemar_is_exact_binomial_on_discordant_pairs() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.4
    b = a.copy()
    flip = rng.random(300) < 0.15
    b[flip] = ~b[flip]
    b[rng.random(300) < 0.05] = True
    t = mcnemar(a, b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    assert (t.b, t.c, t.both, t.neither) == (only_a, only_b, int((a & b).sum()), int((~a & ~b).sum()))
    ref = binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
    assert t.p_value == pytest.approx(ref, rel=1e-9)
    assert mcnemar([True, False], [True, False]).p_value == 1.0
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


def test_paired_diff_covers_the_true_difference() -> None:
    """Newcombe's interval for p_b - p_a on paired data: coverage near 95% by simulation
    (a wrong sign in the correlation term or swapped bounds drops it well below)."""
    rng = np.random.default_rng(0)
    probs = [0.30, 0.15, 0.05, 0.50]  # (a&b, a only, b only, neither)
    true = (probs[0] + probs[2]) - (probs[0] + probs[1])
    hits, sims = 0, 1500
    for _ in range(sims):
        cell = rng.choice(4, size=80, p=probs)
        a = (cell == 0) | (cell == 1)
        b = (cell == 0) | (cell == 2)
        d = paired_diff(a, b)
        assert d.diff == pytest.approx(b.mean() - a.mean())
        assert d.lo is not None and d.hi is not None and d.lo <= d.diff <= d.hi
        hits += d.lo <= true <= d.hi
    assert 0.925 <= hits / sims <= 0.975


def test_ratio_and_bootstrap() -> None:
    r, lo, hi = ratio_interval(wilson(20, 100), wilson(10, 100))
    assert r == pytest.approx(2.0) and lo is not None and hi is not None and lo < 2 < hi
    assert ratio_interval(wilson(0, 10), wilson(3, 10)) == (None, None, None)
    v = np.random.default_rng(1).normal(size=400)
    m, lo2, hi2 = bootstrap(np.mean, v, n_boot=400, seed=0)
    se = v.std() / np.sqrt(v.size)
    assert lo2 is not None and hi2 is not None
    assert lo2 < m < hi2 and hi2 - lo2 == pytest.approx(2 * 1.96 * se, rel=0.2)
