"""DeepFool: exact on affine classifiers, batched with per-input freezing, L2 and L∞."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kmtools.attacks.deepfool import DeepFoolResult, decision_scores, deepfool
from kmtools.errors import ConfigError
from kmtools.models.core import GaussHead, KmModel


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tiny models: one thread is faster, and robust when other jobs load the machine."""
    torch.set_num_threads(1)


def _pairwise_min(model: nn.Linear, x: torch.Tensor, dual: str = "l2") -> torch.Tensor:
    """min_k |f_k - f_l| / ‖w_k - w_l‖ (the distance to the nearest pairwise hyperplane)."""
    with torch.no_grad():
        return _pairwise_min_impl(model, x, dual)


def _pairwise_min_impl(model: nn.Linear, x: torch.Tensor, dual: str) -> torch.Tensor:
    s = model(x)
    lab = s.argmax(1)
    w = model.weight
    out = []
    for i in range(x.shape[0]):
        best = float("inf")
        for k in range(s.shape[1]):
            if k == lab[i]:
                continue
            dw = w[k] - w[lab[i]]
            d = dw.norm() if dual == "l2" else dw.abs().sum()
            best = min(best, abs(float(s[i, k] - s[i, lab[i]])) / float(d))
        out.append(best)
    return torch.tensor(out, dtype=x.dtype)


def test_binary_linear_l2_equals_distance_to_hyperplane() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, dtype=torch.float64)
    b = 0.3
    model = nn.Linear(6, 2).double()
    with torch.no_grad():  # f_1 - f_0 = w·x + b
        model.weight.copy_(torch.stack([torch.zeros(6, dtype=torch.float64), w]))
        model.bias.copy_(torch.tensor([0.0, b], dtype=torch.float64))
    x = torch.randn(20, 6, dtype=torch.float64)
    res = deepfool(model, x, overshoot=0.0)
    analytic = (x @ w + b).abs() / w.norm()
    # DeepFool adds 1e-4 to |f'| so that the step ends just past the boundary
    assert torch.allclose(res.norms, analytic, atol=1e-4 / float(w.norm()) + 1e-9)
    assert (res.iterations == 1).all()
    assert res.converged.all()
    # x + r crosses the boundary: the sign of w·x + b changes
    before = torch.sign(x @ w + b)
    after = torch.sign(res.x_adv @ w + b)
    assert (before * after < 0).all()
    assert torch.allclose(res.r, res.x_adv - x)
    # r is along w (the normal of the hyperplane)
    cos = (res.r @ w).abs() / (res.r.norm(dim=1) * w.norm())
    assert torch.allclose(cos, torch.ones_like(cos))


def test_multiclass_linear_first_step_is_nearest_pairwise_boundary() -> None:
    torch.manual_seed(1)
    model = nn.Linear(8, 5).double()
    x = torch.randn(64, 8, dtype=torch.float64)
    res = deepfool(model, x, overshoot=0.0, candidates=None)
    lower = _pairwise_min(model, x)
    assert res.converged.all()
    assert (res.adv_labels != res.labels).all()
    assert (model(res.x_adv).argmax(1) != model(x).argmax(1)).all()
    one = res.iterations == 1
    assert one.sum() > 32  # most inputs: the nearest pairwise boundary is the real one
    assert torch.allclose(res.norms[one], lower[one], atol=1e-3)
    # the true distance is never below the nearest pairwise hyperplane distance
    assert (res.norms >= lower - 1e-6).all()


def test_linf_linear_uses_dual_l1_norm() -> None:
    torch.manual_seed(2)
    model = nn.Linear(7, 3).double()
    x = torch.randn(40, 7, dtype=torch.float64)
    res = deepfool(model, x, overshoot=0.0, norm="linf", candidates=None)
    lower = _pairwise_min(model, x, dual="l1")
    one = res.iterations == 1
    assert one.any()
    assert torch.allclose(res.norms[one], lower[one], atol=1e-3)
    assert (res.adv_labels != res.labels).all()
    # an L∞ step moves every coordinate by the same amount
    r = res.r[one]
    assert torch.allclose(r.abs(), r.abs().amax(1, keepdim=True).expand_as(r), rtol=1e-6)


def test_batched_equals_one_by_one_and_freezes_flipped_inputs() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    x = torch.randn(12, 10, dtype=torch.float64)
    full = deepfool(model, x)
    ones = deepfool(model, x, batch_size=1)
    assert torch.allclose(full.x_adv, ones.x_adv)
    assert torch.equal(full.iterations, ones.iterations)
    assert full.converged.all()
    # an input frozen after its flip keeps exactly its overshoot step: a longer run
    # (more max_iter) changes nothing for converged inputs
    longer = deepfool(model, x, max_iter=200)
    assert torch.allclose(full.x_adv, longer.x_adv)


def test_given_labels_and_misclassified_inputs() -> None:
    torch.manual_seed(4)
    model = nn.Linear(4, 3).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    pred = model(x).argmax(1)
    wrong = (pred + 1) % 3
    res = deepfool(model, x, labels=wrong)
    assert (res.iterations == 0).all()
    assert torch.equal(res.x_adv, x)
    assert (res.norms == 0).all()
    assert torch.equal(res.labels, wrong)


def test_clip_keeps_inputs_in_range() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(16, 3, 2, 2)
    res = deepfool(model, x, clip=(0.0, 1.0), overshoot=0.5)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.x_adv.shape == x.shape
    d = res.to_dict()
    assert d["images"] == 16 and 0 <= d["converged"] <= 16


def test_gauss_head_uses_log_kappa() -> None:
    torch.manual_seed(6)
    backbone = nn.Sequential(nn.Linear(5, 4))
    head = GaussHead(torch.randn(3, 4), gamma=10.0)
    model = KmModel(backbone, head)
    x = torch.randn(9, 5)
    s = decision_scores(model, x)
    assert torch.allclose(s, head.log_kappa(backbone(x)))
    assert torch.equal(s.argmax(1), model(x).argmax(1))
    res = deepfool(model, x)
    # κ may underflow far from all centroids; log κ never does, so DeepFool converges
    assert res.converged.all()
    assert (model(res.x_adv).argmax(1) != model(x).argmax(1)).all()


def test_mode_restored_and_bad_options() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 2))
    model.train()
    deepfool(model, torch.randn(4, 3))
    assert model.training and model[1].training
    with pytest.raises(ConfigError):
        deepfool(model, torch.randn(4, 3), norm="l7")
    with pytest.raises(ConfigError):
        deepfool(model, torch.randn(4, 3), num_classes=5)


def test_confidence_at_x_adv_and_summary_from_records() -> None:
    torch.manual_seed(7)
    backbone = nn.Sequential(nn.Linear(5, 4))
    model = KmModel(backbone, GaussHead(torch.randn(3, 4), gamma=3.0))
    x = torch.randn(11, 5)
    res = deepfool(model, x, batch_size=4)
    kappa = model(res.x_adv).detach()
    assert torch.allclose(res.conf_adv, kappa.amax(1), atol=1e-6)
    assert res.threshold == pytest.approx(1 / 3)
    assert torch.equal(res.outlier, res.conf_adv < 1 / 3)
    d = res.to_dict()
    flip = res.converged & (res.iterations > 0)
    assert d["flipped"] == int(flip.sum())
    assert d["outlier_share"] == pytest.approx(float((res.conf_adv[flip] < 1 / 3).float().mean()))
    assert DeepFoolResult.summarize(res.records(), "l2", 0.02, res.threshold) == d


def test_empty_batch_gives_an_empty_result() -> None:
    """No inputs (e.g. every one filtered out): empty tensors of the right kinds, not a crash."""
    res = deepfool(nn.Linear(4, 3), torch.zeros(0, 4))
    assert res.x_adv.shape == (0, 4) and res.norms.shape == (0,)
    assert res.labels.dtype == torch.long and res.converged.dtype == torch.bool
