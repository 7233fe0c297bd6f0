"""One-pixel DE choices against the reference (Su et al.; scipy/torchattacks): fitness
confidence|margin|both, success best|any, out-of-range resampling, the detector-aware
objective, effective success, Wilson intervals and paired comparisons."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kmtools.attacks.onepixel import OnePixelResult, _Slots, _Spec, onepixel, paired
from kmtools.stats import wilson


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class Steps(nn.Module):
    """Three classes; the probabilities are a step function of the brightest pixel m.

    m < 0.3: class 0 (correct, confident); 0.3 <= m < cut: ``mid``; m >= cut: ``high``.
    """

    def __init__(self, mid: tuple[float, ...], high: tuple[float, ...], cut: float = 0.7) -> None:
        super().__init__()
        self.mid = torch.tensor(mid).log()
        self.high = torch.tensor(high).log()
        self.low = torch.tensor([0.98, 0.01, 0.01]).log()
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).amax(1)[:, None]
        out = torch.where(m < 0.3, self.low, torch.where(m < self.cut, self.mid, self.high))
        return out + 0 * x.sum()


def _x(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(n, 1, 5, 5), torch.zeros(n, dtype=torch.long)


def test_best_member_rule_differs_from_any_and_margin_fixes_it() -> None:
    # mid: (0.45, 0.55, 0) fools with p_y = 0.45; high: (0.40, 0.30, 0.30) does not fool
    # although p_y = 0.40 is lower. The confidence fitness's best member never fools.
    model = Steps((0.45, 0.55, 1e-6), (0.40, 0.30, 0.30))
    x, y = _x()
    kw = dict(popsize=20, maxiter=15, seed=1)
    best = onepixel(model, x, y, fitness="confidence", success="best", **kw)
    anyr = onepixel(model, x, y, fitness="confidence", success="any", **kw)
    margin = onepixel(model, x, y, fitness="margin", success="best", **kw)
    both = onepixel(model, x, y, fitness="both", success="best", **kw)
    assert not best.success.any() and (best.generations == 15).all()
    # the reported image is the best member's: brightest pixel in the "high" band, p_y = 0.4
    assert (best.x_adv.flatten(1).amax(1) >= 0.7).all()
    assert torch.allclose(best.conf_adv, torch.full((3,), 0.4), atol=1e-5)
    assert anyr.success.all() and (anyr.adv_labels == 1).all()
    assert margin.success.all() and (margin.adv_labels == 1).all()
    assert both.success.all()
    assert not both.success_by["confidence"].any() and both.success_by["margin"].all()
    assert torch.equal(both.x_adv, margin.x_adv)
    d = both.to_dict()
    assert d["fitness"] == "both" and d["by_fitness"]["confidence"]["fooled"] == 0
    assert d["by_fitness"]["margin"]["fooled"] == 3 and d["by_fitness"]["mcnemar"]["only_b"] == 3
    assert torch.equal(both.evaluations, best.evaluations + margin.evaluations)


def test_detector_aware_fools_unflagged_where_plain_is_flagged() -> None:
    # mid: fools with top confidence 0.4 < threshold 0.5 (flagged); high: fools unflagged
    model = Steps((0.30, 0.40, 0.30), (0.35, 0.65, 1e-6), cut=0.6)
    x, y = _x(4)
    kw = dict(popsize=20, maxiter=20, seed=2, threshold=0.5)
    plain = onepixel(model, x, y, **kw)
    aware = onepixel(model, x, y, adaptive=True, **kw)
    assert plain.success.all() and plain.outlier.all() and not plain.effective.any()
    assert aware.success.all() and aware.effective.all() and not aware.outlier.any()
    assert plain.to_dict()["effective"]["fooled"] == 0
    assert aware.to_dict()["effective"]["fooled"] == 4 and aware.to_dict()["adaptive"]


def _spec(bounds: str) -> _Spec:
    return _Spec(pixels=1, p=40, maxiter=1, F=0.5, tol=None, fitness="confidence", success="best",
                 bounds=bounds, log_thr=None, seed=0, dev=torch.device("cpu"), bs=8, chunk=320,
                 amp=False, nhwc=False, shape=(3, 6, 6))


@pytest.mark.parametrize("bounds", ["resample", "clip"])
def test_children_stay_in_the_box_and_resample_like_scipy(bounds: str) -> None:
    sp = _spec(bounds)
    slots = _Slots(sp, False, torch.float32)
    slots.add(torch.arange(8), torch.rand(8, 3, 6, 6), torch.arange(8), torch.zeros(8, dtype=torch.long), None)
    slots.gen.zero_()  # evolve: children, not the initial population
    # a population near the box's faces (inside it): many children leave the box
    g = torch.Generator().manual_seed(0)
    near = torch.where(torch.rand(slots.pop.shape, generator=g) < 0.5, 0.02, 0.98)
    slots.pop = slots.lo + (slots.hi - slots.lo) * (near + 0.01 * torch.rand(slots.pop.shape, generator=g))
    cand = slots.candidates()
    assert (cand >= slots.lo).all() and (cand <= slots.hi).all()
    on_border = ((cand == slots.lo) | (cand == slots.hi)).float().mean()
    if bounds == "clip":
        assert on_border > 0.05  # clamped coordinates pile up on the border
    else:
        assert on_border == 0  # resampled ones are drawn inside, not on it


def test_result_has_wilson_intervals_and_round_trips_with_both() -> None:
    model = Steps((0.45, 0.55, 1e-6), (0.40, 0.30, 0.30))
    x, y = _x(5)
    y[0] = 2  # misclassified: skipped
    res = onepixel(model, x, y, popsize=12, maxiter=4, seed=3, fitness="both")
    d = res.to_dict()
    w = wilson(res.fooled, res.attacked)
    assert (d["rate"], d["rate_lo"], d["rate_hi"], d["fooled"], d["n"]) == (w.rate, w.lo, w.hi, res.fooled, 4)
    assert isinstance(d["rate"], float) and d["robust_accuracy"]["n"] == 5
    back = OnePixelResult.from_records(res.records(), x, pixels=1, popsize=12, maxiter=4,
                                       threshold=res.threshold, head_kind=res.head_kind, seed=3,
                                       settings=res.settings)
    assert back.to_dict() == d


def test_paired_comparison_counts_discordant_images() -> None:
    x, y = _x(6)
    easy = Steps((0.45, 0.55, 1e-6), (0.2, 0.8, 1e-6))  # always fooled
    hard = Steps((0.98, 0.01, 0.01), (0.98, 0.01, 0.01))  # never fooled
    a = onepixel(easy, x, y, popsize=8, maxiter=2)
    b = onepixel(hard, x, y, popsize=8, maxiter=2)
    p = paired(a, b)
    assert p["fooled"]["only_a"] == 6 and p["fooled"]["only_b"] == 0
    assert p["fooled"]["p_value"] == pytest.approx(2 * 0.5**6)
    assert p["robust"]["diff"] == pytest.approx(1.0)
    assert math.isclose(p["fooled"]["diff"], -1.0)
