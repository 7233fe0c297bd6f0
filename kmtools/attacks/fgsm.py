"""Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy 2015) swept over ε.

x̃ = clip(x + ε · sign(∇ₓ L(x, y))), in the model's input space: pixel space in [0, 1]
before normalisation for a :class:`~kmtools.models.core.KmModel` (which normalises inside),
clipped to the valid range. L is the cross-entropy of the decision scores
(:func:`~kmtools.attacks.deepfool.decision_scores`): the logits of a softmax network, and
log κ = -γ‖f(x) - C_k‖² (the nearest-centroid logits) of a Gauss network. The gradient
does not depend on ε, so one backward pass per batch serves the whole sweep.

For each ε the sweep reports accuracy, the mean confidence of the predicted class
(softmax probability, or Gauss-confidence κ), the mean confidence of the wrong
predictions (the paper's Figure 2 plots accuracy and this confidence against ε), the
share of predictions below the outlier threshold, and the share of the fooled inputs
(correct when clean, wrong at ε) whose wrong prediction is flagged as an outlier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from kmtools.errors import ConfigError
from kmtools.models.scoring import (
    Progress,
    class_confidences,
    decision_scores,
    eval_mode,
    model_device,
)
from kmtools.models.scoring import head_kind_of as _head_kind
from kmtools.models.scoring import outlier_threshold as _threshold

__all__ = ["DEFAULT_EPS", "FGSMResult", "fgsm", "fgsm_sweep", "parse_eps"]

DEFAULT_EPS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


def parse_eps(text: str | Sequence[float]) -> list[float]:
    """``"0,0.05,0.1"`` or ``"0,2/255,8/255"`` -> [0.0, ...]; each ε must be a number >= 0."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for it in items:
        if isinstance(it, str) and not it.strip():
            continue
        try:
            if isinstance(it, str) and "/" in it:
                num, _, den = it.partition("/")
                v = float(num) / float(den)
            else:
                v = float(it)
        except (ValueError, ZeroDivisionError) as exc:
            raise ConfigError(f"--eps: {it!r} is not a number (give e.g. --eps 0,0.05,0.1 or 0,2/255,8/255)") from exc
        if not v >= 0 or math.isinf(v):
            raise ConfigError(f"--eps values must be finite and >= 0, got {v}")
        out.append(v)
    if not out:
        raise ConfigError("--eps needs at least one value, e.g. --eps 0,0.05,0.1")
    return out


def _grad_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        scores = decision_scores(model, xg)
        loss = nnf.cross_entropy(scores.float(), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    return g.sign()


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """FGSM examples for one ε: clip(x + ε · sign(∇ₓ CE(scores(x), y))). No batching."""
    with eval_mode(model):
        s = _grad_sign(model, x, y.long())
    out = x + eps * s
    return out.clamp(clip[0], clip[1]) if clip is not None else out


@dataclass
class FGSMResult:
    """FGSM sweep over ε for N inputs.

    Attributes (lists aligned with ``eps``):
        accuracy: share of inputs predicted as their label.
        fooled_rate: share of the inputs predicted correctly when clean that are wrong at ε.
        conf_mean: mean confidence of the predicted class.
        conf_wrong_mean: mean confidence of the wrong predictions (None if none).
        conf_correct_mean: mean confidence of the correct predictions (None if none).
        outlier_share: share of predictions whose confidence is below ``threshold``.
        outlier_share_fooled: share of the fooled inputs whose (wrong) prediction is
            below ``threshold`` (None if none was fooled).
        preds, confs: (E, N) predicted class and its confidence per ε and input.
        clean_preds, clean_confs: (N,) prediction and its confidence without perturbation.
    """

    eps: list[float]
    accuracy: list[float]
    fooled_rate: list[float]
    conf_mean: list[float]
    conf_wrong_mean: list[float | None]
    conf_correct_mean: list[float | None]
    outlier_share: list[float]
    outlier_share_fooled: list[float | None]
    images: int
    clean_accuracy: float
    labels: torch.Tensor
    preds: torch.Tensor
    confs: torch.Tensor
    clean_preds: torch.Tensor
    clean_confs: torch.Tensor
    threshold: float = 0.1
    head_kind: str = "softmax"
    clip: tuple[float, float] | None = (0.0, 1.0)
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_arrays(
        cls,
        eps: Sequence[float],
        labels: torch.Tensor,
        preds: torch.Tensor,
        confs: torch.Tensor,
        clean_preds: torch.Tensor,
        clean_confs: torch.Tensor,
        *,
        threshold: float,
        head_kind: str = "softmax",
        clip: tuple[float, float] | None = (0.0, 1.0),
        settings: dict[str, Any] | None = None,
    ) -> FGSMResult:
        """The sweep's statistics from per-input predictions (E, N) and confidences (E, N)."""
        n = int(labels.shape[0])
        clean = clean_preds == labels
        acc: list[float] = []
        fooled: list[float] = []
        cm: list[float] = []
        cw: list[float | None] = []
        cc: list[float | None] = []
        out: list[float] = []
        outf: list[float | None] = []
        for i in range(len(eps)):
            ok = preds[i] == labels
            low = confs[i] < threshold
            fool = ~ok & clean
            acc.append(int(ok.sum()) / n if n else 0.0)
            fooled.append(float(fool.sum()) / max(int(clean.sum()), 1))
            cm.append(float(confs[i].mean()) if n else 0.0)
            cw.append(float(confs[i][~ok].mean()) if (~ok).any() else None)
            cc.append(float(confs[i][ok].mean()) if ok.any() else None)
            out.append(float(low.float().mean()) if n else 0.0)
            outf.append(float(low[fool].float().mean()) if fool.any() else None)
        return cls(
            eps=[float(e) for e in eps],
            accuracy=acc,
            fooled_rate=fooled,
            conf_mean=cm,
            conf_wrong_mean=cw,
            conf_correct_mean=cc,
            outlier_share=out,
            outlier_share_fooled=outf,
            images=n,
            clean_accuracy=int(clean.sum()) / n if n else 0.0,
            labels=labels,
            preds=preds,
            confs=confs,
            clean_preds=clean_preds,
            clean_confs=clean_confs,
            threshold=threshold,
            head_kind=head_kind,
            clip=clip,
            settings=dict(settings or {}),
        )

    @classmethod
    def from_records(
        cls,
        records: Sequence[dict[str, Any]],
        *,
        threshold: float,
        head_kind: str = "softmax",
        clip: tuple[float, float] | None = (0.0, 1.0),
        settings: dict[str, Any] | None = None,
    ) -> FGSMResult:
        """Rebuild a sweep from :meth:`records` (the same statistics, exactly)."""
        if not records:
            raise ConfigError("no FGSM records to summarise")
        eps = [float(e) for e in records[0]["eps"]]
        e_n = len(eps)
        return cls.from_arrays(
            eps,
            torch.tensor([r["label"] for r in records], dtype=torch.long),
            torch.tensor([r["preds"] for r in records], dtype=torch.long).view(-1, e_n).T.contiguous(),
            torch.tensor([r["confs"] for r in records], dtype=torch.float32).view(-1, e_n).T.contiguous(),
            torch.tensor([r["clean_pred"] for r in records], dtype=torch.long),
            torch.tensor([r["clean_conf"] for r in records], dtype=torch.float32),
            threshold=threshold,
            head_kind=head_kind,
            clip=clip,
            settings=settings,
        )

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "eps": e,
                "accuracy": self.accuracy[i],
                "fooled_rate": self.fooled_rate[i],
                "conf_mean": self.conf_mean[i],
                "conf_wrong_mean": self.conf_wrong_mean[i],
                "conf_correct_mean": self.conf_correct_mean[i],
                "outlier_share": self.outlier_share[i],
                "outlier_share_fooled": self.outlier_share_fooled[i],
            }
            for i, e in enumerate(self.eps)
        ]

    def to_dict(self) -> dict[str, Any]:
        """Summary with one list per metric aligned with ``eps`` (``confidence`` is the mean
        confidence of the predicted class), plus ``clean_accuracy`` and ``min_accuracy``."""
        return {
            "attack": "fgsm",
            "head_kind": self.head_kind,
            "images": self.images,
            "clean_accuracy": self.clean_accuracy,
            "min_accuracy": min(self.accuracy) if self.accuracy else None,
            "outlier_threshold": self.threshold,
            "clip": list(self.clip) if self.clip is not None else None,
            "eps": list(self.eps),
            "accuracy": list(self.accuracy),
            "confidence": list(self.conf_mean),
            "confidence_wrong": list(self.conf_wrong_mean),
            "confidence_correct": list(self.conf_correct_mean),
            "fooled_rate": list(self.fooled_rate),
            "outlier_share": list(self.outlier_share),
            "outlier_share_fooled": list(self.outlier_share_fooled),
            **({"settings": self.settings} if self.settings else {}),
        }

    def records(self) -> list[dict[str, Any]]:
        """One dict per input: label, clean prediction and confidence, and per ε the
        prediction and its confidence (exact float32 values)."""
        return [
            {
                "index": i,
                "label": int(self.labels[i]),
                "clean_pred": int(self.clean_preds[i]),
                "clean_conf": float(self.clean_confs[i]),
                "eps": self.eps,
                "preds": [int(p) for p in self.preds[:, i]],
                "confs": [float(c) for c in self.confs[:, i]],
            }
            for i in range(self.images)
        ]


def fgsm_sweep(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Sequence[float] | str = DEFAULT_EPS,
    *,
    clip: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int | None = 256,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> FGSMResult:
    """Accuracy and confidence of ``model`` under FGSM for every ε in ``eps``.

    Args:
        model: a classifier on the inputs ``x`` (pixel space for a KmModel).
        x: (N, ...) inputs; y: (N,) labels.
        eps: perturbation sizes (in input units, e.g. 0.05 of the [0, 1] pixel range).
        clip: valid input range the perturbed inputs are clamped to; ``None``: no clamp.
        batch_size: inputs per gradient/forward batch (``None``: all at once).
        device: where to run (the model is moved there); default the model's device.
        progress: ``progress(done_inputs, N)`` after each batch.

    Returns:
        :class:`FGSMResult` (``eps = 0`` gives the clean accuracy).
    """
    eps_l = parse_eps(eps) if isinstance(eps, str) else parse_eps(list(eps))
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"{y.shape[0]} labels for {x.shape[0]} inputs")
    dev = model_device(model, device)
    n = x.shape[0]
    bs = n if not batch_size else max(1, int(batch_size))
    e_n = len(eps_l)
    preds = torch.zeros(e_n, n, dtype=torch.long)
    confs = torch.zeros(e_n, n)
    labels = y.long().cpu()
    clean_p = torch.zeros(n, dtype=torch.long)
    clean_c = torch.zeros(n)
    nc = 1
    with eval_mode(model):
        for s in range(0, n, bs):
            xb = x[s : s + bs].to(dev)
            if not xb.is_floating_point():
                xb = xb.float()
            yb = labels[s : s + bs].to(dev)
            sg = _grad_sign(model, xb, yb)
            with torch.no_grad():
                c0 = class_confidences(model, xb)
                nc = c0.shape[1]
                c0max, p0 = c0.max(1)
                clean_p[s : s + bs] = p0.cpu()
                clean_c[s : s + bs] = c0max.cpu()
                for i, e in enumerate(eps_l):
                    xe = xb + e * sg
                    if clip is not None:
                        xe = xe.clamp(clip[0], clip[1])
                    c = class_confidences(model, xe)
                    cmax, p = c.max(1)
                    preds[i, s : s + bs] = p.cpu()
                    confs[i, s : s + bs] = cmax.cpu()
            if progress is not None:
                progress(min(s + bs, n), n)
    return FGSMResult.from_arrays(
        eps_l,
        labels,
        preds,
        confs,
        clean_p,
        clean_c,
        threshold=_threshold(model, nc),
        head_kind=_head_kind(model),
        clip=clip,
        settings={"batch_size": bs, "device": str(dev)},
    )
