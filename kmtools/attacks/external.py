"""Any `torchattacks <https://github.com/Harry24k/adversarial-attacks-pytorch>`_ attack
around a kmtools model: ``kmtools attack torchattacks:NAME [--kw key=value]``.

A :class:`~kmtools.models.core.KmModel` already takes inputs in [0, 1] (normalisation is
its first layer), which is what torchattacks expects. The attack sees the model's decision
scores (:func:`~kmtools.models.scoring.decision_scores`): logits for a softmax network and
log κ for a Gauss network, so its cross-entropy is the Gauss network's own training loss.

torchattacks pins an old ``requests``, so it is installed apart:
``pip install --no-deps torchattacks``.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kmtools.errors import ConfigError
from kmtools.models.scoring import (
    class_confidences,
    decision_scores,
    eval_mode,
    head_kind_of,
    model_device,
    outlier_threshold,
)
from kmtools.stats import wilson

__all__ = ["INSTALL_HINT", "ExternalResult", "parse_kw", "torchattacks_attack"]

INSTALL_HINT = "torchattacks is not installed: pip install --no-deps torchattacks (it pins an old requests)"


class _Scores(nn.Module):
    """The model's decision scores as the logits torchattacks differentiates."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return decision_scores(self.model, x)


def parse_kw(items: Sequence[str] | None) -> dict[str, Any]:
    """``["eps=8/255", "steps=10", "norm='Linf'"]`` -> keyword arguments (Python literals;
    ``a/b`` fractions; anything else is kept as a string)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--kw expects key=value, got {item!r}")
        text = text.strip()
        value: Any
        try:
            num, slash, den = text.partition("/")
            value = float(num) / float(den) if slash else ast.literal_eval(text)
        except (ValueError, SyntaxError, ZeroDivisionError):
            value = text
        out[key.strip()] = value
    return out


def _load(name: str) -> type:
    try:
        ta = importlib.import_module("torchattacks")
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc
    cls = getattr(ta, name, None)
    if not isinstance(cls, type):
        known = sorted(n for n in dir(ta) if isinstance(getattr(ta, n), type) and not n.startswith("_"))
        raise ConfigError(f"torchattacks has no attack {name!r}; known: {', '.join(known[:40])}")
    return cls


@dataclass
class ExternalResult:
    """A torchattacks attack's outcome on N inputs (tensors on the CPU)."""

    name: str
    labels: torch.Tensor
    clean_preds: torch.Tensor
    preds: torch.Tensor
    conf: torch.Tensor
    x_adv: torch.Tensor
    threshold: float
    head_kind: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def fooled(self) -> torch.Tensor:
        return (self.clean_preds == self.labels) & (self.preds != self.labels)

    @property
    def effective(self) -> torch.Tensor:
        return self.fooled & (self.conf >= self.threshold)

    def to_dict(self) -> dict[str, Any]:
        n = int(self.labels.numel())
        att = int((self.clean_preds == self.labels).sum())
        return {
            "attack": f"torchattacks:{self.name}", "kwargs": {k: repr(v) for k, v in self.kwargs.items()},
            "head_kind": self.head_kind, "images": n, "outlier_threshold": self.threshold,
            "accuracy": float((self.preds == self.labels).float().mean()) if n else None,
            "attacked": att,
            **wilson(int(self.fooled.sum()), att).to_dict(count="fooled"),
            "effective": wilson(int(self.effective.sum()), att).to_dict(count="fooled"),
        }


def torchattacks_attack(
    name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, kw: dict[str, Any] | None = None,
    threshold: float | None = None, batch_size: int | None = None, device: str | torch.device | None = None,
) -> ExternalResult:
    """Run ``torchattacks.<name>(model, **kw)`` on ``x`` (in [0, 1]) with labels ``y``."""
    cls = _load(name)
    dev = model_device(model, device)
    kwargs = dict(kw or {})
    n = x.shape[0]
    bs = batch_size or max(n, 1)
    with eval_mode(model):
        wrapped = _Scores(model).eval()
        try:
            attack = cls(wrapped, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"torchattacks.{name}: {exc}") from exc
        advs, preds, confs, clean = [], [], [], []
        for s in range(0, n, bs):
            xb, yb = x[s : s + bs].to(dev), y[s : s + bs].long().to(dev)
            xa = attack(xb, yb).detach()
            with torch.no_grad():
                c_adv = class_confidences(model, xa)
                clean.append(decision_scores(model, xb).argmax(1).cpu())
                preds.append(decision_scores(model, xa).argmax(1).cpu())
            confs.append(c_adv.gather(1, preds[-1].to(dev)[:, None])[:, 0].cpu())
            advs.append(xa.cpu())
        nc = int(c_adv.shape[1]) if n else 2
    thr = float(threshold) if threshold is not None else outlier_threshold(model, nc)
    empty = torch.zeros(0, dtype=torch.long)
    return ExternalResult(
        name=name, labels=y.long().cpu(), clean_preds=torch.cat(clean) if clean else empty,
        preds=torch.cat(preds) if preds else empty, conf=torch.cat(confs) if confs else torch.zeros(0),
        x_adv=torch.cat(advs) if advs else x.cpu(), threshold=thr, head_kind=head_kind_of(model), kwargs=kwargs,
    )
