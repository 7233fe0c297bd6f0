"""Reject options (prototype-based-nn-layers, Sec. 7.4): accuracy-reject curves, n-ball
rejection, cost-based rejection (empirical, Chow, trained threshold) and the JSON document
``reject_curve`` gives ``kmtools evaluate``."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from kmtools.errors import ConfigError, DataError
from kmtools.heads import GLVQHead, build_head
from kmtools.heads.reject import (
    NBallModel,
    accuracy_reject_curve,
    chow_threshold,
    cost_reject,
    cost_reject_loss,
    fit_nball,
    fit_reject_threshold,
    nball_reject,
    operating_point,
    reject_curve,
)
from kmtools.models import KmModel


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CONF = torch.tensor([0.9, 0.8, 0.8, 0.6, 0.3])
CORRECT = torch.tensor([True, True, False, True, False])


# --------------------------------------------------------------------------- curves


def test_accuracy_reject_curve_exact() -> None:
    """Tied confidences (0.8, 0.8) are accepted or rejected together: four operating points."""
    c = accuracy_reject_curve(CONF, CORRECT)
    assert c.n == 5
    assert c.thresholds == pytest.approx([0.3, 0.6, 0.8, 0.9])
    assert c.reject_rate == pytest.approx([0.0, 0.2, 0.4, 0.8])
    assert c.accuracy == pytest.approx([3 / 5, 3 / 4, 2 / 3, 1.0])
    assert c.accepted == [5, 4, 3, 1]
    # AUC: mean accuracy accepting the a = 1..5 most confident; a = 2 splits the tie
    # (1 of the 2 tied inputs is correct): expected correct 1 + 1/2
    assert c.auc == pytest.approx((1 + 1.5 / 2 + 2 / 3 + 3 / 4 + 3 / 5) / 5)
    assert c.at_reject_rate(0.5) == (pytest.approx(0.8), pytest.approx(2 / 3))
    assert c.at_reject_rate(0.1) == (pytest.approx(0.3), pytest.approx(0.6))
    assert json.loads(json.dumps(c.to_dict()))["accepted"] == [5, 4, 3, 1]


def test_auc_is_mean_accuracy_over_reject_levels() -> None:
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(300, generator=g)
    corr = torch.rand(300, generator=g) < conf  # more confident, more often right
    order = torch.argsort(conf, descending=True)
    cum = torch.cumsum(corr[order].double(), 0)
    brute = float((cum / torch.arange(1, 301)).mean())
    c = accuracy_reject_curve(conf, corr)
    assert c.auc == pytest.approx(brute, rel=1e-12)
    assert c.auc > float(corr.double().mean())  # the score ranks: better than chance
    # a score that ranks nothing (all equal) has AUC = accuracy; a perfect one, the maximum
    assert accuracy_reject_curve(torch.ones(300), corr).auc == pytest.approx(float(corr.double().mean()))
    perfect = accuracy_reject_curve(corr.double(), corr)
    k, n = int(corr.sum()), 300
    assert perfect.auc == pytest.approx((k + sum(k / a for a in range(k + 1, n + 1))) / n)
    thinned = accuracy_reject_curve(conf, corr, max_points=11)
    assert len(thinned.thresholds) == 11 and thinned.reject_rate[0] == 0.0 and thinned.auc == c.auc


def test_curve_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="4 confidences but 5"):
        accuracy_reject_curve(CONF[:4], CORRECT)
    with pytest.raises(DataError, match="NaN"):
        accuracy_reject_curve(torch.tensor([0.5, float("nan")]), torch.tensor([True, False]))
    with pytest.raises(DataError, match="no samples"):
        accuracy_reject_curve(torch.zeros(0), torch.zeros(0, dtype=torch.bool))


# --------------------------------------------------------------------------- cost-based


def test_cost_reject_exact() -> None:
    """λ_e = 1, λ_r = 0.5: costs are 0.4 (accept all), 0.3 (θ = 0.6), 0.4 (θ = 0.8),
    0.4 (θ = 0.9) and 0.5 (reject all): the minimum is θ = 0.6."""
    op = cost_reject(CONF, CORRECT, cost_error=1.0, cost_reject=0.5)
    assert op.threshold == pytest.approx(0.6) and op.rule == "min-empirical-cost"
    assert op.reject_rate == pytest.approx(0.2) and op.error_rate == pytest.approx(0.2)
    assert op.accuracy == pytest.approx(0.75) and op.cost == pytest.approx(0.3)
    # rejecting never pays when λ_r >= λ_e
    assert cost_reject(CONF, CORRECT, cost_error=1.0, cost_reject=1.0).reject_rate == 0.0
    # the most confident input is wrong and rejecting is cheap: reject everything
    op = cost_reject(torch.tensor([0.9, 0.5]), torch.tensor([False, True]), cost_reject=0.1)
    assert op.reject_rate == 1.0 and op.cost == pytest.approx(0.1) and op.threshold > 0.9
    with pytest.raises(ConfigError, match="costs"):
        cost_reject(CONF, CORRECT, cost_error=0.0)


def test_cost_reject_is_the_minimum_over_every_threshold() -> None:
    g = torch.Generator().manual_seed(1)
    conf = torch.randint(0, 20, (400,), generator=g).double() / 20  # many ties
    corr = torch.rand(400, generator=g) < 0.3 + 0.7 * conf
    for lam in (0.05, 0.2, 0.45):
        op = cost_reject(conf, corr, cost_error=1.0, cost_reject=lam)
        grid = [*conf.unique().tolist(), 2.0]
        brute = min(operating_point(conf, corr, t, cost_reject=lam).cost for t in grid)
        assert op.cost == pytest.approx(brute, abs=1e-12)
        assert operating_point(conf, corr, op.threshold, cost_reject=lam).cost == pytest.approx(op.cost)


def test_chow_rule_is_near_optimal_for_calibrated_posteriors() -> None:
    """For calibrated top posteriors p (P(correct) = p), rejecting p < 1 - λ_r/λ_e is the
    Bayes rule: its cost is within sampling noise of the best empirical threshold."""
    g = torch.Generator().manual_seed(2)
    p = 0.5 + 0.5 * torch.rand(20000, generator=g, dtype=torch.float64)
    corr = torch.rand(20000, generator=g, dtype=torch.float64) < p
    assert chow_threshold(1.0, 0.2) == pytest.approx(0.8)
    chow = operating_point(p, corr, chow_threshold(1.0, 0.2), cost_reject=0.2, rule="chow")
    best = cost_reject(p, corr, cost_reject=0.2)
    assert chow.cost <= best.cost + 0.003
    assert chow.reject_rate == pytest.approx(0.6, abs=0.02)  # P(p < 0.8) = 0.6


def test_trained_threshold_reaches_the_empirical_optimum() -> None:
    """Gradient descent on the smooth cost (sigmoid accept indicator) lands on a threshold
    whose exact cost is close to the best one, and far below accepting everything."""
    g = torch.Generator().manual_seed(3)
    conf = torch.rand(2000, generator=g, dtype=torch.float64) * 4.0 - 2.0  # any range: a margin
    corr = torch.rand(2000, generator=g, dtype=torch.float64) < torch.sigmoid(3.0 * conf)
    lam = 0.05
    start = fit_reject_threshold(conf, corr, cost_reject=lam, steps=0)  # θ before training
    trained = fit_reject_threshold(conf, corr, cost_reject=lam)
    best = cost_reject(conf, corr, cost_reject=lam)
    assert trained.rule == "trained-smooth-cost"
    assert start.cost > best.cost + 0.03  # the start is far from the optimum ...
    assert trained.cost <= best.cost + 0.005  # ... training gets there
    assert abs(trained.threshold - best.threshold) < 0.1 * abs(start.threshold - best.threshold)


def test_cost_reject_loss_is_the_smooth_cost() -> None:
    conf = torch.tensor([0.9, 0.8, 0.8, 0.6, 0.3], requires_grad=True)
    loss = cost_reject_loss(conf, CORRECT, 0.7, cost_error=1.0, cost_reject=0.5, steepness=1e4)
    exact = operating_point(CONF, CORRECT, 0.7, cost_reject=0.5).cost
    assert float(loss.detach()) == pytest.approx(exact, abs=1e-6)
    soft = cost_reject_loss(conf, CORRECT, 0.7, cost_reject=0.5, steepness=5.0)
    soft.backward()
    assert conf.grad is not None
    # raising a wrong input's confidence raises the cost; a right input's, lowers it
    assert float(conf.grad[2]) > 0 and float(conf.grad[0]) < 0


# --------------------------------------------------------------------------- n-balls


def test_nball_fit_holds_the_chosen_share_with_the_smallest_radius() -> None:
    g = torch.Generator().manual_seed(4)
    protos = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [30.0, 30.0]])
    plabels = torch.tensor([0, 1, 2, 0])
    y = torch.arange(3).repeat_interleave(200)
    f = protos[y] + torch.randn(600, 2, generator=g) * (1.0 + y[:, None].float())
    y = y.clone()
    y[::37] = (y[::37] + 1) % 3  # some label noise: those points are not "correct"
    for coverage in (0.5, 0.9, 0.95):
        balls = fit_nball(f, y, protos, plabels, coverage=coverage)
        d = torch.cdist(f.double(), protos.double())
        dmin, win = d.min(1)
        ok = plabels[win] == y
        for k in range(3):
            mine = dmin[ok & (win == k)]
            r = float(balls.radii[k])
            assert int(balls.support[k]) == mine.numel()
            assert float((mine <= r + 1e-5).double().mean()) >= coverage  # the share lies inside
            assert float((mine < r - 1e-5).double().mean()) < coverage  # no smaller radius would do
        assert float(balls.radii[3]) == 0.0 and int(balls.support[3]) == 0  # wins no point
        inside = dmin[ok] <= balls.radii[win[ok]].double() + 1e-5
        assert float(inside.double().mean()) >= coverage
    assert balls.to_dict()["coverage"] == 0.95
    with pytest.raises(ConfigError, match="coverage"):
        fit_nball(f, y, protos, plabels, coverage=0.0)


def test_nball_reject_exact() -> None:
    """Prototypes 0 (class 0, r = 1) and 10 (class 1, r = 2) on a line."""
    protos = torch.tensor([[0.0], [10.0]])
    balls = NBallModel(radii=torch.tensor([1.0, 2.0]), coverage=0.9, support=torch.tensor([5, 5]))
    x = torch.tensor([[0.5], [1.5], [11.9], [7.0]])
    labels = torch.tensor([0, 0, 1, 0])
    res = nball_reject(x, protos, balls, prototype_labels=torch.tensor([0, 1]), labels=labels)
    assert res.accepted.tolist() == [True, False, True, False]
    assert res.winner.tolist() == [0, 0, 1, 1]
    assert res.margin.tolist() == pytest.approx([0.5, -0.5, 0.05, -0.5], abs=1e-5)
    assert res.prediction is not None and res.prediction.tolist() == [0, 0, 1, 1]
    assert res.reject_rate == 0.5
    assert res.accuracy_accepted == 1.0 and res.accuracy_all == 0.75
    assert res.to_dict() == {"n": 4, "rejected": 2, "reject_rate": 0.5, "accuracy_accepted": 1.0,
                             "accuracy_all": 0.75}
    with pytest.raises(DataError, match="radii"):
        nball_reject(x, protos, torch.tensor([1.0]))


# --------------------------------------------------------------------------- reject_curve


def test_reject_curve_from_confidences_is_json() -> None:
    doc = reject_curve(CONF.numpy(), CORRECT.numpy(), cost_reject=0.5, max_points=3)
    doc = json.loads(json.dumps(doc))
    assert doc["n"] == 5 and doc["accuracy"] == pytest.approx(0.6) and "nball" not in doc
    sec = doc["confidence"]
    assert sec["auc"] == pytest.approx(accuracy_reject_curve(CONF, CORRECT).auc)
    assert len(sec["curve"]["reject_rate"]) == 3 and sec["curve"]["reject_rate"][0] == 0.0
    assert sec["operating_point"]["threshold"] == pytest.approx(0.6)
    assert sec["chow"]["threshold"] == pytest.approx(0.5) and sec["chow"]["rule"] == "chow"
    assert sec["at_reject_rate"]["0.2"]["accuracy"] == pytest.approx(0.75)
    # scores outside [0, 1] (a margin, -distance) get no Chow point
    assert "chow" not in reject_curve(-torch.arange(5.0), CORRECT)["confidence"]


def _tiny_model() -> tuple[KmModel, TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(5)
    centres = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    y = torch.arange(3).repeat_interleave(60)
    x = centres[y] + torch.randn(180, 3, generator=g)
    yt = torch.arange(3).repeat_interleave(20)
    xt = centres[yt] + 1.5 * torch.randn(60, 3, generator=g)
    head = build_head("glvq", x, y, 3, prototypes_per_class=2)
    model = KmModel(torch.nn.Identity(), head, input_shape=(3,)).eval()
    return model, TensorDataset(xt, yt), TensorDataset(x, y)


def test_reject_curve_from_a_model_with_nballs() -> None:
    model, test, train = _tiny_model()
    doc = json.loads(json.dumps(reject_curve(model, test, train=train, coverage=0.9)))
    assert doc["head_kind"] == "glvq" and doc["n"] == 60
    head = model.head
    assert isinstance(head, GLVQHead)
    with torch.no_grad():
        f = test.tensors[0]
        pred = head(f).argmax(1)
        conf = head.confidences(head(f)).gather(1, pred[:, None]).squeeze(1)
    correct = pred == test.tensors[1]
    assert doc["accuracy"] == pytest.approx(float(correct.double().mean()))
    assert doc["confidence"]["auc"] == pytest.approx(accuracy_reject_curve(conf, correct).auc)
    nb = doc["nball"]
    assert nb["prototypes"] == 6 and nb["coverage"] == 0.9 and nb["train_n"] == 180
    assert nb["operating_point"]["rule"] == "nball" and nb["operating_point"]["threshold"] == 0.0
    assert 0.0 < nb["operating_point"]["reject_rate"] < 1.0
    assert nb["min_cost_point"]["cost"] <= nb["operating_point"]["cost"] + 1e-12
    # on its own training data the balls keep at least the chosen share of correct points
    own = reject_curve(model, train, train=train, coverage=0.9)
    assert own["nball"]["operating_point"]["reject_rate"] <= 1.0 - 0.9 * own["accuracy"] + 1e-9
    # far-away inputs (noise) are all rejected by the balls but not by the relative GLVQ confidence
    far = TensorDataset(torch.full((10, 3), 40.0) + torch.randn(10, 3), torch.zeros(10, dtype=torch.long))
    noise = reject_curve(model, far, train=train, coverage=0.9)
    assert noise["nball"]["operating_point"]["reject_rate"] == 1.0
    assert min(noise["confidence"]["curve"]["threshold"]) >= 0.5
    assert not math.isnan(noise["confidence"]["auc"])
    with pytest.raises(ConfigError, match="KmModel"):
        reject_curve(torch.nn.Linear(3, 3), test)


def test_reject_curve_softmax_model_uses_class_means() -> None:
    g = torch.Generator().manual_seed(6)
    lin = torch.nn.Linear(3, 3)
    model = KmModel(torch.nn.Identity(), lin, input_shape=(3,)).eval()
    x = torch.randn(90, 3, generator=g)
    with torch.no_grad():
        y = lin(x).argmax(1)  # labels the model gets right
    if y.unique().numel() < 3:  # pragma: no cover - depends on the random layer
        pytest.skip("a class without inputs")
    doc = reject_curve(model, TensorDataset(x, y), train=TensorDataset(x, y))
    assert doc["accuracy"] == 1.0 and doc["head_kind"] == "softmax"
    assert doc["nball"]["prototype_source"].startswith("class means")
    assert np.isfinite(doc["nball"]["auc"])
