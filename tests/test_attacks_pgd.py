"""PGD: the analytic distance of a linear classifier (succeeds just above it, fails just
below), stays in the ε-ball and [0, 1], the detector-aware objective on a Gauss head, the
gradient-masking checks, fractions in --eps, intervals in to_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kmtools.attacks import paired_pgd, parse_eps, pgd
from kmtools.errors import ConfigError
from kmtools.models.core import GaussHead, KmModel


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _linear_case(seed: int = 0, d: int = 20, n: int = 6) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """2 classes, s1 - s0 = w·x + b; inputs at signed L2 distance -c_i from the boundary."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(d), w]))
        b = -float(w.sum()) * 0.5
        lin.bias.copy_(torch.tensor([0.0, b]))
    c = torch.linspace(0.03, 0.1, n)
    x = 0.5 - c[:, None] * w / w.norm()
    score = x @ w + b  # = -c ‖w‖
    return lin.eval(), x, torch.zeros(n, dtype=torch.long), score.abs().detach()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_model_fooled_just_above_the_analytic_distance(norm: str) -> None:
    model, x, y, margin = _linear_case()
    w = (model.weight[1] - model.weight[0]).detach()
    dist = margin / (w.norm() if norm == "l2" else w.abs().sum())
    for i in range(x.shape[0]):
        above = pgd(model, x[i : i + 1], y[i : i + 1], [float(dist[i]) * 1.03], norm=norm, steps=50, seed=i)
        below = pgd(model, x[i : i + 1], y[i : i + 1], [float(dist[i]) * 0.97], norm=norm, steps=50,
                    restarts=3, seed=i)
        assert above.fooled.all(), (norm, i)
        assert not below.fooled.any(), (norm, i)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_never_leaves_the_ball_or_the_box(norm: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    x = torch.rand(8, 1, 6, 6)
    x[:, :, 0] = 0.0
    x[:, :, -1] = 1.0  # pixels at the box's faces
    y = torch.randint(0, 3, (8,))
    eps = [0.0, 0.05, 0.3, 2.0]
    res = pgd(model, x, y, eps, norm=norm, steps=6, restarts=2, step_size=0.5)
    for i, e in enumerate(eps):
        d = (res.x_adv[i] - x).flatten(1)
        nrm = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (nrm <= e + 1e-5).all()
        assert res.x_adv[i].min() >= 0 and res.x_adv[i].max() <= 1
    assert torch.equal(res.x_adv[0], x)
    assert torch.equal(res.preds[0], res.clean_preds)
    # the stored predictions are the model's on the stored inputs
    assert torch.equal(res.preds[2], model(res.x_adv[2]).argmax(1))


def _gauss_case() -> tuple[KmModel, torch.Tensor, torch.Tensor]:
    """Features = inputs in R². The margin log κ1 - log κ0 is linear in x, so plain ℓ∞ PGD
    goes to the ε-ball's corner in direction sign(C1 - C0): fooled, but far from C1 and so
    flagged as an outlier (κ < 0.1). C1 itself is inside the ball: fooled and not flagged."""
    c = torch.tensor([[0.5, 0.5], [0.6, 0.52]])
    model = KmModel(nn.Identity(), GaussHead(c, gamma=2000.0), input_shape=(2,)).eval()
    x = torch.tensor([[0.52, 0.50], [0.51, 0.49], [0.50, 0.51], [0.53, 0.50]])
    return model, x, torch.zeros(4, dtype=torch.long)


def test_adaptive_pgd_on_gauss_head_beats_the_plain_loss_on_effective_success() -> None:
    model, x, y = _gauss_case()
    kw = dict(norm="linf", steps=40, restarts=2, threshold=0.1, seed=0)
    plain = pgd(model, x, y, [0.3], **kw)
    aware = pgd(model, x, y, [0.3], adaptive=True, **kw)
    assert plain.fooled.all() and plain.outlier.all() and not plain.effective.any()
    assert aware.fooled.all() and aware.effective.all()
    assert int(aware.effective.sum()) >= int(plain.effective.sum())
    d = aware.to_dict()
    assert d["effective"] == [4] and d["effective_rate_lo"][0] > 0.4 and d["rate"] == [1.0]
    assert plain.to_dict()["outlier_share_fooled"] == [1.0]
    # the Gauss head is attacked on log κ: its prediction and confidence are κ's
    assert torch.allclose(aware.conf[0], model(aware.x_adv[0]).amax(1), atol=1e-6)


def test_sanity_checks_and_paired_comparison() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    x = torch.rand(12, 1, 4, 4)
    y = model(x).argmax(1)
    res = pgd(model, x, y, parse_eps("0,1/255,8/255"), steps=5, sanity=True)
    s = res.sanity
    assert s["large_eps"] == 1.0 and s["accuracy_at_large_eps"] <= 0.05 and s["passed"]
    assert s["stronger"]["steps"] == 10 and s["stronger"]["restarts"] == 2
    d = res.to_dict()
    assert d["accuracy"][0] == 1.0 and d["clean_accuracy"]["correct"] == 12
    assert all(lo <= a <= hi for lo, a, hi in zip(d["accuracy_lo"], d["accuracy"], d["accuracy_hi"], strict=True))
    other = pgd(model, x, y, [0.0, 8 / 255], steps=5)
    p = paired_pgd(res, other)
    assert [q["eps"] for q in p] == [0.0, 8 / 255]
    assert p[0]["diff"] == 0.0 and p[0]["p_value"] == 1.0


def test_parse_eps_fractions_and_errors() -> None:
    assert parse_eps("0,2/255, 8/255") == [0.0, 2 / 255, 8 / 255]
    for bad in ("1/0", "a/255", "-1/255", "inf"):
        with pytest.raises(ConfigError):
            parse_eps(bad)
    model, x, y = _gauss_case()
    for kw in (dict(norm="l1"), dict(restarts=0), dict(loss="hinge")):
        with pytest.raises(ConfigError):
            pgd(model, x, y, [0.1], **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        pgd(model, x * 3, y, [0.1])


def test_records_round_trip_keeps_misclassified_inputs_out_of_the_rate() -> None:
    from kmtools.attacks.pgd import PGDResult

    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(20, 1, 4, 4)
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3  # five inputs the model gets wrong: never "fooled", not in n
    res = pgd(model, x, y, [0.0, 0.05, 0.3], steps=5)
    d = res.to_dict()
    assert d["n"] == 15 and d["fooled"][0] == 0
    keep = ("norm", "steps", "step_size", "restarts", "loss", "adaptive", "threshold", "head_kind", "seed")
    back = PGDResult.from_records(res.records(), eps=res.eps, **{k: getattr(res, k) for k in keep})
    assert back.to_dict() == d
