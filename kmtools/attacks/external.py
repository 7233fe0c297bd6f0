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
from kmtools.stats import paired_diff, wilson

__all__ = ["INSTALL_HINT", "ExternalResult", "attack_class", "paired", "parse_kw", "split_name", "torchattacks_attack"]

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


def split_name(spec: str) -> str:
    """``"torchattacks:PGD"`` -> ``"PGD"``; a one-line error for any other form."""
    lib, sep, name = spec.partition(":")
    if not sep or lib.strip().lower() != "torchattacks" or not name.strip().isidentifier():
        raise ConfigError(f"external attacks are named torchattacks:NAME (e.g. torchattacks:PGD), got {spec!r}")
    return name.strip()


def attack_class(name: str) -> type:
    """``torchattacks.<name>``; a one-line :class:`ConfigError` (the install hint) without torchattacks."""
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

    @property
    def robust(self) -> torch.Tensor:
        """(N,) still correctly classified after the attack."""
        return self.preds == self.labels

    def records(self) -> list[dict[str, Any]]:
        """One dict per input (``index``, ``label``, ``pred``, ``adv_pred``, ``conf``) for JSON lines."""
        return [
            {"index": i, "label": int(self.labels[i]), "pred": int(self.clean_preds[i]),
             "adv_pred": int(self.preds[i]), "conf": float(self.conf[i])}
            for i in range(int(self.labels.numel()))
        ]

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]], *, name: str, threshold: float, head_kind: str,
                     kwargs: dict[str, Any] | None = None) -> ExternalResult:
        """Rebuild a result (without ``x_adv``) from :meth:`records`."""
        def col(key: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([r[key] for r in records], dtype=dtype)

        return cls(name=name, labels=col("label", torch.long), clean_preds=col("pred", torch.long),
                   preds=col("adv_pred", torch.long), conf=col("conf", torch.float32), x_adv=torch.zeros(0),
                   threshold=threshold, head_kind=head_kind, kwargs=dict(kwargs or {}))

    def to_dict(self) -> dict[str, Any]:
        n = int(self.labels.numel())
        att = int((self.clean_preds == self.labels).sum())
        return {
            "attack": f"torchattacks:{self.name}", "kwargs": {k: repr(v) for k, v in self.kwargs.items()},
            "head_kind": self.head_kind, "images": n, "outlier_threshold": self.threshold,
            "accuracy": float((self.preds == self.labels).float().mean()) if n else None,
            "robust_accuracy": wilson(int(self.robust.sum()), n).to_dict(count="correct"),
            "clean_accuracy": wilson(att, n).to_dict(count="correct"),
            "attacked": att,
            **wilson(int(self.fooled.sum()), att).to_dict(count="fooled"),
            "effective": wilson(int(self.effective.sum()), att).to_dict(count="fooled"),
        }


def torchattacks_attack(
    name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, kw: dict[str, Any] | None = None,
    threshold: float | None = None, batch_size: int | None = None, device: str | torch.device | None = None,
) -> ExternalResult:
    """Run ``torchattacks.<name>(model, **kw)`` on ``x`` (in [0, 1]) with labels ``y``."""
    cls = attack_class(name)
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


def paired(a: ExternalResult, b: ExternalResult) -> dict[str, Any]:
    """Two models attacked on the same inputs: robust accuracy of ``b`` minus ``a`` over all
    inputs, and fooled / effective rates over the inputs both classify correctly, each with
    Newcombe's interval and McNemar's exact test."""
    if not torch.equal(a.labels, b.labels):
        raise ConfigError("paired comparison needs the same inputs for both models")
    both = ((a.clean_preds == a.labels) & (b.clean_preds == b.labels)).numpy()
    out: dict[str, Any] = {"images": int(a.labels.numel()), "attacked_by_both": int(both.sum())}
    out["robust"] = paired_diff(a.robust.numpy(), b.robust.numpy()).to_dict()
    for key in ("fooled", "effective"):
        out[key] = paired_diff(getattr(a, key).numpy()[both], getattr(b, key).numpy()[both]).to_dict()
    return out
