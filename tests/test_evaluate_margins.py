"""Honest margins in evaluate: the exact boundary distance (softmax: the analytic hyperplane
distance; Gauss: the bisector), Theorem 2 as its lower-bound corollary, float64
log-confidences (no AUROC ties from saturated softmax), intervals on rates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kmtools.evaluate import boundary_distance, evaluate, theorem2_margin
from kmtools.models.core import GaussHead, KmModel


def test_softmax_boundary_distance_is_the_analytic_hyperplane_distance() -> None:
    torch.manual_seed(0)
    head = nn.Linear(5, 2).double()
    f = torch.randn(40, 5, dtype=torch.float64)
    pred = head(f).argmax(1)
    w = head.weight[1] - head.weight[0]
    b = head.bias[1] - head.bias[0]
    ref = (f @ w + b).abs() / w.norm()
    d = boundary_distance(f, head, pred)
    assert d is not None
    torch.testing.assert_close(d, ref.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["softmax", "gauss"])
def test_boundary_distance_is_exact_multiclass(kind: str) -> None:
    """Moving by (1 - 1e-6)·d in random directions never changes the prediction; moving by
    (1 + 1e-6)·d towards the nearest boundary does."""
    torch.manual_seed(1)
    c, dim = 5, 4
    head: nn.Module = nn.Linear(dim, c).double() if kind == "softmax" else GaussHead(torch.randn(c, dim))
    head = head.double()

    def scores(v: torch.Tensor) -> torch.Tensor:
        return head(v) if kind == "softmax" else head.log_kappa(v)  # type: ignore[operator]

    f = torch.randn(30, dim, dtype=torch.float64)
    pred = scores(f).argmax(1)
    d = boundary_distance(f, head, pred)
    assert d is not None and (d > 0).all()
    u = torch.randn(30, 200, dim, dtype=torch.float64)
    u = u / u.norm(dim=2, keepdim=True)
    inside = f[:, None] + (1 - 1e-6) * d[:, None, None] * u
    assert (scores(inside.view(-1, dim)).argmax(1).view(30, 200) == pred[:, None]).all()
    # the nearest hyperplane's normal: gradient of (s_k - s_l) for the minimising l
    with torch.no_grad():
        s = scores(f)
    flips = 0
    for i in range(30):
        best = None
        for l_ in range(c):
            if l_ == pred[i]:
                continue
            v = f[i].clone().requires_grad_(True)
            g = scores(v[None])[0]
            (grad,) = torch.autograd.grad(g[pred[i]] - g[l_], v)
            dist = float((s[i, pred[i]] - s[i, l_]) / grad.norm()) if kind == "softmax" else None
            if kind == "gauss":
                cc = head.centroids.double()  # type: ignore[union-attr]
                dist = float(((f[i] - cc[l_]).pow(2).sum() - (f[i] - cc[pred[i]]).pow(2).sum())
                             / (2 * (cc[l_] - cc[pred[i]]).norm()))
            if best is None or dist < best[0]:
                best = (dist, -grad / grad.norm())
        assert best is not None and best[0] == pytest.approx(float(d[i]), rel=1e-9)
        out = f[i] + (1 + 1e-6) * d[i] * best[1]
        flips += int(scores(out[None]).argmax(1)[0] != pred[i])
    assert flips == 30


def test_theorem2_is_a_corollary_lower_bound_and_reported_as_such() -> None:
    torch.manual_seed(2)
    c = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    model = KmModel(nn.Identity(), GaussHead(c), input_shape=(2,)).eval()
    x = torch.randn(200, 2) * 2
    res = evaluate(model, TensorDataset(x, torch.randint(0, 3, (200,))), lipschitz=2.0, n_boot=0)
    assert res.boundary is not None and res.margin is not None
    t2 = theorem2_margin(x.double(), c.double(), torch.from_numpy(res.prediction)).numpy()
    assert (t2 <= res.boundary + 1e-12).all() and (t2 < res.boundary - 1e-6).any()
    d = res.to_dict()
    assert d["boundary"]["method"].startswith("bisector") and not d["boundary"]["input_is_bound"]
    assert d["boundary"]["input"]["mean"] == pytest.approx(float(np.mean(res.boundary)) / 2.0)
    assert d["theorem2"]["role"].startswith("corollary") and d["theorem2"]["lipschitz_estimate"]
    assert d["accuracy_lo"] <= d["accuracy"] <= d["accuracy_hi"] and d["correct"] == int(res.correct.sum())


def test_saturated_softmax_scores_do_not_tie() -> None:
    """Confidences that round to 1.0 in float32 keep their order as float64 log-confidences."""
    head = nn.Linear(1, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        head.bias.zero_()
    model = KmModel(nn.Identity(), head, input_shape=(1,), head_path="fc").eval()
    x_in = torch.linspace(30, 40, 50)[:, None]  # p ≈ 1 - e^-60 .. : 1.0 in float32
    x_out = torch.linspace(20, 29, 50)[:, None]
    res = evaluate(model, TensorDataset(x_in, torch.zeros(50, dtype=torch.long)),
                   ood=TensorDataset(x_out, torch.zeros(50, dtype=torch.long)), n_boot=0)
    assert (res.confidence == 1.0).all() and (res.ood_confidence["dataset"] == 1.0).all()
    m = res.ood_metrics()
    assert m is not None and m["score"] == "log_confidence" and m["auroc"] == 1.0
