"""FGSM sweep: ε = 0 is the clean accuracy, accuracy falls with ε on a linear model, the
perturbation is ε · sign(∇ CE) before clipping, and clipping keeps the valid range."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf
from torch import nn

from kmtools.attacks.fgsm import FGSMResult, fgsm, fgsm_sweep, parse_eps
from kmtools.errors import ConfigError
from kmtools.models.core import GaussHead, KmModel


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tiny models: one thread is faster, and robust when other jobs load the machine."""
    torch.set_num_threads(1)


def _data(n: int = 200, d: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, nn.Linear]:
    torch.manual_seed(seed)
    model = nn.Linear(d, 2)
    x = torch.rand(n, d)
    y = model(x).argmax(1)
    flip = torch.rand(n) < 0.2  # some inputs start misclassified
    y[flip] = 1 - y[flip]
    return x, y, model


def test_eps_zero_is_clean_accuracy() -> None:
    x, y, model = _data()
    res = fgsm_sweep(model, x, y, eps=[0.0, 0.1], batch_size=64)
    clean = float((model(x).argmax(1) == y).float().mean())
    assert res.accuracy[0] == pytest.approx(clean)
    assert res.clean_accuracy == pytest.approx(clean)
    assert res.fooled_rate[0] == 0.0
    probs = torch.softmax(model(x), 1).amax(1).detach()
    assert res.conf_mean[0] == pytest.approx(float(probs.mean()), abs=1e-5)


def test_linear_accuracy_non_increasing_in_eps() -> None:
    x, y, model = _data(seed=1)
    eps = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
    res = fgsm_sweep(model, x, y, eps=eps, clip=None)
    assert all(a >= b for a, b in zip(res.accuracy, res.accuracy[1:], strict=False))
    assert res.accuracy[-1] < res.accuracy[0]
    # per input: once wrong under a larger ε, never right again (binary linear: margin falls)
    wrong = res.preds != y
    assert (wrong.int().diff(dim=0) >= 0).all()
    assert res.fooled_rate[-1] > 0
    d = res.to_dict()
    assert d["eps"] == eps and d["accuracy"] == res.accuracy
    assert [r["eps"] for r in res.rows()] == eps
    assert d["min_accuracy"] == min(res.accuracy)


def test_perturbation_is_eps_sign_grad_before_clipping() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.rand(8, 3, 2, 2)
    y = torch.randint(0, 3, (8,))
    xg = x.clone().requires_grad_(True)
    nnf.cross_entropy(model(xg), y, reduction="sum").backward()
    assert xg.grad is not None
    expected = 0.07 * xg.grad.sign()
    adv = fgsm(model, x, y, 0.07, clip=None)
    assert torch.allclose(adv - x, expected)
    clipped = fgsm(model, x, y, 0.07)
    assert torch.allclose(clipped, (x + expected).clamp(0, 1))
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_gauss_head_gradient_uses_log_kappa() -> None:
    torch.manual_seed(3)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    head = GaussHead(torch.randn(3, 4), gamma=5.0)
    model = KmModel(backbone, head)
    x = torch.rand(10, 6)
    y = torch.randint(0, 3, (10,))
    xg = x.clone().requires_grad_(True)
    nnf.cross_entropy(head.log_kappa(backbone(xg)), y, reduction="sum").backward()
    assert xg.grad is not None
    adv = fgsm(model, x, y, 0.05, clip=None)
    assert torch.allclose(adv - x, 0.05 * xg.grad.sign())
    res = fgsm_sweep(model, x, y, eps=[0.0, 0.05], clip=None)
    kappa = model(x)
    assert res.head_kind == "gauss"
    assert torch.allclose(res.confs[0], kappa.amax(1), atol=1e-6)
    assert res.outlier_share[0] == pytest.approx(float((kappa.amax(1) < 1 / 3).float().mean()))


def test_parse_eps_and_errors() -> None:
    assert parse_eps("0, 0.05,0.1") == [0.0, 0.05, 0.1]
    with pytest.raises(ConfigError):
        parse_eps("0,abc")
    with pytest.raises(ConfigError):
        parse_eps("-0.1")
    with pytest.raises(ConfigError):
        parse_eps("")
    x, y, model = _data(n=4)
    with pytest.raises(ConfigError):
        fgsm_sweep(model, x, y[:3])


def test_outlier_share_of_fooled_and_records_round_trip() -> None:
    torch.manual_seed(4)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    model = KmModel(backbone, GaussHead(torch.randn(3, 4), gamma=2.0))
    x = torch.rand(40, 6)
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3  # five start wrong: never "fooled"
    res = fgsm_sweep(model, x, y, eps=[0.0, 0.2, 0.5], clip=None, batch_size=16)
    kappa = model(x).detach()
    clean_ok = kappa.argmax(1) == y
    for i, e in enumerate(res.eps):
        adv = fgsm(model, x, y, e, clip=None)
        conf, pred = model(adv).detach().max(1)
        fooled = clean_ok & (pred != y)
        want = float((conf[fooled] < 1 / 3).float().mean()) if fooled.any() else None
        got = res.outlier_share_fooled[i]
        assert (got is None) == (want is None)
        if want is not None:
            assert got == pytest.approx(want)
    assert res.outlier_share_fooled[0] is None
    back = FGSMResult.from_records(res.records(), threshold=res.threshold, head_kind="gauss", clip=None,
                                   settings=res.settings)
    assert back.to_dict() == res.to_dict()
