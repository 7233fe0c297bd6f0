"""Boundary distance r(x), the boundary point z = x + r(x), and Theorem 2 of the Gauss paper.

Fawzi et al., Sec. II: r(x) is the smallest perturbation changing the prediction, z lies on
the boundary and r(x) is normal to it there. Theorem 2 ("Gauss networks"): any Δ moving a
Gauss network's prediction from k to l has ‖Δ‖ ≥ (‖C_l - C_k‖ - ‖f(x̃) - C_l‖ - ‖f(x) - C_k‖)/L_p.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kmtools.attacks import decision_scores
from kmtools.centroids import class_means
from kmtools.data import load_dataset
from kmtools.errors import ConfigError
from kmtools.features import as_tensors
from kmtools.geometry import boundary_distance, boundary_points, lipschitz_local, lipschitz_upper_bound
from kmtools.models import GaussHead, KmModel
from tests.helpers import digits_model


@pytest.fixture(scope="module")
def digits() -> tuple[KmModel, KmModel, torch.Tensor]:
    """The digits SmallCNN, its Gauss network (class-mean centroids) and 24 test inputs."""
    model = digits_model()
    xtr, ytr = as_tensors(load_dataset("digits", split="train").dataset)
    with torch.no_grad():
        f = model.features(xtr.float())
    C = class_means(f, ytr, 10)
    gamma = 1.0 / float((f - C[ytr]).pow(2).sum(1).mean())
    gauss = model.with_head(GaussHead(C, gamma=gamma)).eval()
    xte, _ = as_tensors(load_dataset("digits", split="test").dataset)
    return model, gauss, xte[:24].float()


@pytest.mark.parametrize("which", [0, 1])
def test_boundary_point_is_on_the_boundary(digits: tuple[KmModel, KmModel, torch.Tensor], which: int) -> None:
    model, x = digits[which], digits[2]
    res = boundary_points(model, x)
    ok = res.converged
    assert int(ok.sum()) >= 22
    with torch.no_grad():
        s = decision_scores(model, res.z[ok])
        s_before = decision_scores(model, x[ok] + (1 - 1e-3) * res.r[ok])
    lab, adv = res.labels[ok], res.adv_labels[ok]
    assert bool((lab != adv).all())
    ar = torch.arange(len(lab))
    # the two top scores at z are the two classes of the boundary, and they are equal
    top2 = s.topk(2, dim=1).indices.sort(1).values
    assert torch.equal(top2, torch.stack([lab, adv], 1).sort(1).values)
    gap = (s[ar, lab] - s[ar, adv]).abs()
    spread = s.max(1).values - s.min(1).values
    assert float((gap / spread).max()) < 1e-4
    # just before z the input is still in its own class: z is where the segment leaves it
    assert torch.equal(s_before.argmax(1), lab)
    assert bool(res.on_boundary[ok].all())
    # z - x is no longer than DeepFool's overshooting perturbation
    assert bool((res.distance[ok] <= res.deepfool_norm[ok] + 1e-6).all())
    torch.testing.assert_close(res.distance[ok], res.r[ok].flatten(1).norm(dim=1))


def test_linear_classifier_distance_is_exact_and_normal() -> None:
    """For an affine two-class model r(x) = |s_0 - s_1| / ‖w_0 - w_1‖ along w_adv - w_lab."""
    torch.manual_seed(0)
    head = nn.Linear(7, 2)
    model = KmModel(nn.Identity(), head, input_shape=(7,)).eval()
    x = torch.randn(16, 7)
    res = boundary_points(model, x, bisection_steps=40)
    w = head.weight.detach()
    with torch.no_grad():
        s = model(x)
    exact = (s[:, 0] - s[:, 1]).abs() / (w[0] - w[1]).norm()
    torch.testing.assert_close(res.distance, exact, rtol=1e-5, atol=1e-6)
    normal = w[res.adv_labels] - w[res.labels]
    cos = torch.nn.functional.cosine_similarity(res.r, normal, dim=1)
    torch.testing.assert_close(cos, torch.ones(16), rtol=0, atol=1e-5)


def _gauss_linear(scale: float, orthogonal: bool, d: int = 6, c: int = 4) -> KmModel:
    """(float32: kmtools.attacks.deepfool scores confidences in float32)"""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    if orthogonal:
        A = torch.linalg.qr(A).Q
    lin = nn.Linear(d, d)
    with torch.no_grad():
        lin.weight.copy_(scale * A)
        lin.bias.copy_(torch.randn(d, generator=g))
    C = 2.0 * torch.randn(c, d, generator=g)
    return KmModel(lin, GaussHead(C, gamma=0.5), input_shape=(d,)).eval()


def test_theorem2_is_tight_for_a_scaled_rotation() -> None:
    """f(x) = sQx + b: the boundaries are hyperplanes, L_p = s exactly, and the bisector
    form of the bound equals the true distance whenever DeepFool lands on the nearest
    bisector (its one linear step is exact)."""
    model = _gauss_linear(scale=3.0, orthogonal=True)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    res = boundary_distance(model, x, candidates=None, overshoot=1e-3, bisection_steps=40)
    assert res.lipschitz is not None and res.lipschitz.guaranteed
    assert abs(float(res.lipschitz.value) - 3.0) < 1e-5
    ok = res.converged
    assert bool(ok.all())
    assert res.bound_margin is not None and res.bound_any is not None and res.bound_at_adv is not None
    assert bool((res.bound_margin <= res.distance.float() + 1e-5).all())
    assert bool((res.bound_any <= res.bound_margin + 1e-6).all())
    assert bool((res.bound_at_adv <= res.deepfool_norm.float() + 1e-5).all())
    tight = (res.bound_margin - res.distance.float()).abs() < 1e-4
    assert float(tight.float().mean()) >= 0.9  # equality except where a third class intervenes
    assert res.violations() == 0


def test_theorem2_bound_below_distance_general_linear_map() -> None:
    model = _gauss_linear(scale=1.0, orthogonal=False)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(3))
    res = boundary_distance(model, x, candidates=None)
    assert res.bound_margin is not None
    sigma = float(torch.linalg.matrix_norm(model.backbone.weight.detach().double(), ord=2))
    assert abs(float(res.lipschitz.value) - sigma) < 1e-5 * sigma  # type: ignore[union-attr, arg-type]
    assert bool((res.bound_margin <= res.distance.float() + 1e-6).all())
    assert res.violations() == 0


def test_theorem2_holds_on_every_input_of_a_gauss_network(
    digits: tuple[KmModel, KmModel, torch.Tensor],
) -> None:
    _, gauss, x = digits
    res = boundary_distance(gauss, x, lipschitz="product")
    ok = res.converged
    assert int(ok.sum()) >= 22
    assert res.lipschitz is not None and res.lipschitz.method == "product"
    for b in (res.bound_at_adv, res.bound_any, res.bound_margin):
        assert b is not None
        assert bool((b[ok] <= res.deepfool_norm[ok].float() * (1 + 1e-6)).all())
    for b in (res.bound_any, res.bound_margin):
        assert bool((b[ok] <= res.distance[ok].float() * (1 + 1e-6)).all())  # type: ignore[index]
    assert res.violations() == 0
    doc = res.to_dict()
    assert doc["theorem2"]["violations"] == 0 and doc["converged"] == int(ok.sum())
    # the composed bound is an upper bound of the local Jacobian norms along x -> x_adv
    local = lipschitz_local(gauss, x[:4], res.x_adv[:4], points=2, iters=8)
    assert isinstance(local.value, torch.Tensor) and not local.guaranteed
    assert float(local.value.max()) <= float(res.lipschitz.value) * (1 + 1e-6)  # type: ignore[arg-type]


def test_softmax_network_gets_no_theorem2_and_unknown_layers_are_refused(
    digits: tuple[KmModel, KmModel, torch.Tensor],
) -> None:
    model, _, x = digits
    res = boundary_distance(model, x[:4])
    assert res.bound_any is None and "theorem2" not in res.to_dict()
    backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    odd = KmModel(backbone, GaussHead(torch.randn(2, 4)), input_shape=(4,))
    with pytest.raises(ConfigError, match="LayerNorm"):
        lipschitz_upper_bound(odd, torch.randn(1, 4))


def test_product_bound_is_guaranteed_only_without_power_iteration() -> None:
    """``guaranteed`` means a proof: exact SVD, activation slopes and max-pooling are; a
    convolution's power-iterated norm approaches σ from below, so a network with one gets
    an estimate (same value), never ``guaranteed``."""
    torch.manual_seed(0)
    mlp = KmModel(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)), nn.Linear(4, 3), input_shape=(6,))
    est = lipschitz_upper_bound(mlp, torch.rand(1, 6))
    w1, w2 = mlp.backbone[0].weight.detach().double(), mlp.backbone[2].weight.detach().double()
    assert est.guaranteed and not any("not a proof" in a for a in est.assumptions)
    assert abs(est.value - float(torch.linalg.matrix_norm(w1, 2) * torch.linalg.matrix_norm(w2, 2))) < 1e-9
    conv = KmModel(nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 4)),
                   nn.Linear(4, 3), input_shape=(1, 8, 8))
    est = lipschitz_upper_bound(conv, torch.rand(1, 1, 8, 8))
    assert not est.guaranteed and est.to_dict()["guaranteed"] is False
    assert any(a.startswith("not a proof: 1 factor(s)") and "(_0)" in a for a in est.assumptions), est.assumptions
    assert [n for n, _ in est.layers] == ["_0", "_1", "_2", "_3", "_4"]  # conv, ReLU, max-pool, flatten, linear
