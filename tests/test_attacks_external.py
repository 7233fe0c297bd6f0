"""torchattacks wrapper: a one-line install hint without torchattacks (not installed here),
and the wrapper's contract with a stand-in module: decision scores in, [0, 1] inputs,
Wilson intervals and effective success out."""

from __future__ import annotations

import sys
import types
from typing import ClassVar

import pytest
import torch
from torch import nn

from kmtools.attacks.external import INSTALL_HINT, parse_kw, torchattacks_attack
from kmtools.errors import ConfigError
from kmtools.models.core import GaussHead, KmModel


def test_missing_torchattacks_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # as if not installed (it may be, for benchmarks)
    model = KmModel(nn.Flatten(), nn.Linear(4, 2), input_shape=(1, 2, 2))
    with pytest.raises(ConfigError) as exc:
        torchattacks_attack("PGD", model, torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long))
    assert str(exc.value) == INSTALL_HINT and "\n" not in INSTALL_HINT
    assert "pip install --no-deps torchattacks" in INSTALL_HINT


class _FakeFGSM:
    """torchattacks-like: __init__(model, **kw), __call__(x, y) -> x_adv in [0, 1]."""

    seen: ClassVar[list[torch.Tensor]] = []

    def __init__(self, model: nn.Module, eps: float = 0.1) -> None:
        self.model, self.eps = model, eps

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        out = self.model(xg)
        _FakeFGSM.seen.append(out.detach())
        loss = nn.functional.cross_entropy(out, y)
        (g,) = torch.autograd.grad(loss, xg)
        return (x + self.eps * g.sign()).clamp(0, 1)


def test_wrapper_feeds_decision_scores_and_reports_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("torchattacks")
    fake.FGSM = _FakeFGSM  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchattacks", fake)
    torch.manual_seed(0)
    c = torch.tensor([[0.2, 0.2], [0.8, 0.8]])
    model = KmModel(nn.Flatten(), GaussHead(c, gamma=10.0), input_shape=(1, 1, 2)).eval()
    x = torch.tensor([[[[0.3, 0.3]]], [[[0.45, 0.45]]], [[[0.7, 0.75]]]])
    y = torch.tensor([0, 0, 1])
    _FakeFGSM.seen.clear()
    res = torchattacks_attack("FGSM", model, x, y, kw=parse_kw(["eps=3/10"]))
    # the attack saw log κ, not κ
    assert torch.allclose(_FakeFGSM.seen[0], model.head.log_kappa(x.flatten(1)))  # type: ignore[operator]
    assert (res.x_adv >= 0).all() and (res.x_adv <= 1).all()
    assert (res.x_adv - x).abs().max() <= 0.3 + 1e-6
    d = res.to_dict()
    assert d["attack"] == "torchattacks:FGSM" and d["n"] == 3 and d["rate_lo"] <= d["rate"] <= d["rate_hi"]
    assert d["fooled"] == int(res.fooled.sum()) and d["effective"]["fooled"] <= d["fooled"]
    with pytest.raises(ConfigError, match="no attack 'Nope'"):
        torchattacks_attack("Nope", model, x, y)
    with pytest.raises(ConfigError, match="FGSM"):
        torchattacks_attack("FGSM", model, x, y, kw={"bogus": 1})


def test_parse_kw() -> None:
    assert parse_kw(["eps=8/255", "steps=10", "norm='Linf'", "mode=abc", "flag=True"]) == {
        "eps": 8 / 255, "steps": 10, "norm": "Linf", "mode": "abc", "flag": True}
    with pytest.raises(ConfigError):
        parse_kw(["novalue"])
