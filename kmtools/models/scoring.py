"""How a model scores its inputs, in one neutral place for attacks, geometry and evaluation.

* :func:`decision_scores` – smooth class scores whose argmax is the prediction and whose
  differences define the decision boundaries: logits of a softmax network, log κ =
  -γ‖f(x) - C_k‖² of a Gauss network (differentiable; attacks and DeepFool use them).
* :func:`class_confidences` – per-class confidences: softmax probabilities, or κ.
* :func:`class_log_confidences` – their logarithm computed without underflow (log-softmax
  of the logits, log κ exactly), for margins and for comparing scores that saturate.
* :func:`outlier_threshold`, :func:`head_kind_of` – the model's outlier threshold (1/c
  unless it sets one) and head kind.
* :func:`model_device`, :func:`eval_mode` – the device to work on, and eval mode for a block.

These used to live in ``kmtools.attacks.deepfool`` and ``kmtools.attacks.onepixel`` (which
imported each other); those modules re-export them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from kmtools.device import autocast, resolve

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after each unit of work (images or generations)."""

__all__ = [
    "Progress",
    "class_confidences",
    "class_log_confidences",
    "decision_scores",
    "eval_mode",
    "head_kind_of",
    "is_km",
    "model_device",
    "outlier_threshold",
]


def is_km(model: nn.Module) -> bool:
    """True for a model split into ``features`` and a ``head`` module (a KmModel)."""
    return hasattr(model, "features") and isinstance(getattr(model, "head", None), nn.Module)


def decision_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Scores whose argmax is the prediction and whose differences define the boundaries.

    For a model with a Gauss head (``model.head.log_kappa`` and ``model.features``, as a
    :class:`~kmtools.models.core.KmModel` has) these are log κ = -γ‖f(x) - C_k‖², the
    nearest-centroid logits; otherwise ``model(x)`` (logits of a softmax network, the
    head's own scores for prototype heads). Shape (N, classes). Differentiable.
    """
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "log_kappa") and hasattr(model, "features"):
        out: torch.Tensor = head.log_kappa(model.features(x))  # type: ignore[operator]
        return out
    scores = model(x)
    if isinstance(scores, (tuple, list)):
        scores = scores[0]
    return scores  # type: ignore[no-any-return]


def _head_scores(model: nn.Module, x: torch.Tensor, amp: bool, log: bool) -> torch.Tensor:
    f = model.features(x)  # type: ignore[operator]
    with torch.autocast(device_type=x.device.type, enabled=False):
        head = model.head
        p = next(head.parameters(), None)  # type: ignore[union-attr]
        dtype = p.dtype if p is not None and p.dtype in (torch.float32, torch.float64) else torch.float32
        f = f.to(dtype)
        if log and hasattr(head, "log_kappa"):
            return head.log_kappa(f)  # type: ignore[operator,no-any-return]
        scores = head(f)  # type: ignore[operator]
        fn = getattr(head, "confidences", None)
        if callable(fn):
            conf = fn(scores)
            return conf.clamp_min(torch.finfo(conf.dtype).tiny).log() if log else conf  # type: ignore[no-any-return]
        return torch.log_softmax(scores, dim=-1) if log else torch.softmax(scores.float(), dim=-1)


def class_confidences(model: nn.Module, x: torch.Tensor, *, amp: bool = False) -> torch.Tensor:
    """Per-class confidences (N, classes) in float32: softmax for softmax nets, κ for Gauss nets.

    For a :class:`~kmtools.models.core.KmModel` the backbone runs under bf16 autocast
    (when ``amp`` and on CUDA) and the head in float32, so small differences between
    candidates survive; other modules use ``model.confidences`` when they have it, else the
    softmax of ``model(x)``. No gradients.
    """
    with torch.no_grad(), autocast(x.device, amp):
        if is_km(model):
            return _head_scores(model, x, amp, log=False).float()
        fn = getattr(model, "confidences", None)
        if callable(fn):
            return fn(x).float()  # type: ignore[no-any-return]
        out = model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return torch.softmax(out.float(), dim=-1)


def class_log_confidences(
    model: nn.Module, x: torch.Tensor, *, amp: bool = False, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """log of :func:`class_confidences` without underflow, shape (N, classes), in ``dtype``.

    Softmax heads: ``log_softmax`` of the logits (so probabilities that round to 1.0 in
    float32 still differ); Gauss heads: log κ = -γ‖f - C_k‖² exactly; other heads with a
    ``confidences`` rule: its log, floored at the smallest positive float. No gradients.
    """
    with torch.no_grad(), autocast(x.device, amp):
        if is_km(model):
            return _head_scores(model, x, amp, log=True).to(dtype)
        fn = getattr(model, "confidences", None)
        if callable(fn):
            c = fn(x).to(dtype)
            return c.clamp_min(torch.finfo(dtype).tiny).log()  # type: ignore[no-any-return]
        out = model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return torch.log_softmax(out.to(dtype), dim=-1)


def outlier_threshold(model: nn.Module, num_classes: int) -> float:
    """The model's outlier threshold on the predicted class's confidence (default 1/c)."""
    t = getattr(model, "threshold", None)
    if isinstance(t, (int, float)):
        return float(t)
    return 1.0 / max(num_classes, 1)


def head_kind_of(model: nn.Module) -> str:
    """``model.head.kind`` (``"softmax"`` for a linear head or a model without a head)."""
    head = getattr(model, "head", None)
    return str(getattr(head, "kind", "softmax")) if head is not None else "softmax"


def model_device(model: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """The device to work on: ``device`` when given (the model is moved there), else the
    device of the model's first parameter or buffer (CPU for a model without any)."""
    if device is not None:
        dev = resolve(device)
        model.to(dev)
        return dev
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block; restore each module's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.train(mode)
