"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016): the minimal perturbation r(x).

DeepFool linearises the classifier around the current iterate and steps onto the nearest
linearised decision boundary; repeated until the predicted label changes, the sum of the
steps approximates the smallest perturbation r(x) that moves x across its decision
boundary. kmtools runs it batched: all images of a batch iterate together, and an image
is frozen as soon as its label flips (its iterate no longer changes and its gradients are
no longer computed).

The scores DeepFool differentiates are :func:`decision_scores`: the logits of a softmax
network, and log κ = -γ‖f(x) - C_k‖² (the nearest-centroid logits) of a Gauss network,
whose argmax is the prediction of the Gauss-confidences κ but whose differences are
smooth and do not underflow. The same helper serves the geometry commands.

The scoring helpers live in :mod:`kmtools.models.scoring` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kmtools.errors import ConfigError
from kmtools.models.scoring import (
    Progress,
    class_confidences,
    decision_scores,
    eval_mode,
    model_device,
    outlier_threshold,
)

__all__ = ["DeepFoolResult", "Progress", "decision_scores", "deepfool", "eval_mode", "model_device"]


@dataclass
class DeepFoolResult:
    """DeepFool output for N inputs.

    Attributes:
        x_adv: (N, ...) the perturbed inputs x + r (clipped to ``clip`` when given).
        r: (N, ...) ``x_adv - x``, the minimal perturbation found (overshoot included).
        norms: (N,) ‖r‖₂ (``norm="l2"``) or ‖r‖∞ (``norm="linf"``) per input.
        labels: (N,) the labels DeepFool moves away from (the given ``labels`` or the
            original predictions).
        adv_labels: (N,) predictions at ``x_adv``.
        iterations: (N,) DeepFool steps taken (0 when the input was already not
            predicted as its label).
        converged: (N,) True where the label flipped within ``max_iter`` steps.
        norm: "l2" or "linf"; overshoot: the overshoot used.
        conf_adv: (N,) confidence of the prediction at ``x_adv`` (softmax probability, or
            Gauss-confidence κ); outlier: (N,) ``conf_adv < threshold`` (the model's
            outlier threshold, 1/c by default). Empty when not computed.
    """

    x_adv: torch.Tensor
    r: torch.Tensor
    norms: torch.Tensor
    labels: torch.Tensor
    adv_labels: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    norm: str = "l2"
    overshoot: float = 0.02
    conf_adv: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    threshold: float = 0.1

    def __len__(self) -> int:
        return int(self.norms.shape[0])

    @property
    def outlier(self) -> torch.Tensor:
        return self.conf_adv.cpu() < self.threshold

    def to_dict(self) -> dict[str, Any]:
        """Summary: counts and statistics of the norms of the converged inputs (see
        :meth:`summarize`)."""
        return self.summarize(self.records(), self.norm, self.overshoot, self.threshold)

    @staticmethod
    def summarize(
        records: Sequence[dict[str, Any]], norm: str, overshoot: float, threshold: float
    ) -> dict[str, Any]:
        """The summary of :meth:`records` (so an interrupted run resumed from its records
        reports exactly what one run would).

        Keys: ``images``, ``converged`` (count) and ``converged_rate``; ``norm_mean``,
        ``norm_median``, ``norm_min``, ``norm_max`` and ``iterations_mean`` over the
        converged inputs; ``flipped`` (converged with at least one step),
        ``mean_conf_adv`` (confidence of the new prediction) and ``outlier_share`` (share
        of those predictions below ``threshold``) over the flipped inputs.
        """
        n = len(records)
        conv = torch.tensor([bool(r["converged"]) for r in records], dtype=torch.bool)
        norms = torch.tensor([float(r["norm"]) for r in records], dtype=torch.float32)[conv]
        its_all = torch.tensor([int(r["iterations"]) for r in records], dtype=torch.long)
        its = its_all[conv].float()
        flip = conv & (its_all > 0)
        have_conf = n > 0 and all(r.get("conf_adv") is not None for r in records)
        conf = torch.tensor([float(r["conf_adv"]) for r in records]) if have_conf else torch.zeros(0)
        conf_f = conf[flip] if have_conf else torch.zeros(0)
        return {
            "attack": "deepfool",
            "norm": norm,
            "overshoot": overshoot,
            "images": n,
            "converged": int(conv.sum()),
            "converged_rate": float(conv.float().mean()) if n else 0.0,
            "norm_mean": float(norms.mean()) if norms.numel() else None,
            "norm_median": float(norms.median()) if norms.numel() else None,
            "norm_min": float(norms.min()) if norms.numel() else None,
            "norm_max": float(norms.max()) if norms.numel() else None,
            "iterations_mean": float(its.mean()) if its.numel() else None,
            "flipped": int(flip.sum()),
            "mean_conf_adv": float(conf_f.mean()) if conf_f.numel() else None,
            "outlier_share": float((conf_f < threshold).float().mean()) if conf_f.numel() else None,
            "outlier_threshold": threshold,
        }

    def records(self) -> list[dict[str, Any]]:
        """One dict per input (for JSON lines): ``index``, ``label``, ``adv_label``,
        ``norm``, ``iterations``, ``converged``, ``conf_adv`` and ``outlier`` (``None``
        when not computed)."""
        have = self.conf_adv.numel() == len(self)
        conf = self.conf_adv.detach().float().cpu()
        return [
            {
                "index": i,
                "label": int(self.labels[i]),
                "adv_label": int(self.adv_labels[i]),
                "norm": float(self.norms[i]),
                "iterations": int(self.iterations[i]),
                "converged": bool(self.converged[i]),
                "conf_adv": float(conf[i]) if have else None,
                "outlier": bool(conf[i] < self.threshold) if have else None,
            }
            for i in range(len(self))
        ]


def _flat_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    flat = v.flatten(1)
    if norm == "l2":
        return flat.norm(dim=1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return flat.abs().sum(dim=1)  # l1 (the dual norm of linf)


def _acc(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (keeps float64 for float64 models)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, ...) broadcastable against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _deepfool_batch(
    model: nn.Module,
    x0: torch.Tensor,
    labels: torch.Tensor | None,
    k: int,
    overshoot: float,
    max_iter: int,
    norm: str,
    clip: tuple[float, float] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n = x0.shape[0]
    with torch.no_grad():
        s0 = _acc(decision_scores(model, x0))
    num = s0.shape[1]
    if labels is None:
        labels = s0.argmax(1)
    labels = labels.to(x0.device).long()
    # candidate classes: the label first, then the top-(k-1) other classes by score
    masked = s0.clone()
    masked.scatter_(1, labels[:, None], float("-inf"))
    others = masked.topk(min(k, num) - 1, dim=1).indices
    cands = torch.cat([labels[:, None], others], dim=1)  # (n, k)

    r_tot = torch.zeros_like(x0)
    x_cur = x0.clone()
    iters = torch.zeros(n, dtype=torch.long, device=x0.device)
    active = (s0.argmax(1) == labels).nonzero().flatten()
    step = 0
    while active.numel() and step < max_iter:
        xa = x_cur[active].clone().requires_grad_(True)
        scores = decision_scores(model, xa)
        ca = cands[active]
        sel = scores.gather(1, ca)  # (a, k)
        grads = []
        for j in range(ca.shape[1]):
            (g,) = torch.autograd.grad(sel[:, j].sum(), xa, retain_graph=j < ca.shape[1] - 1)
            grads.append(g)
        with torch.no_grad():
            g_all = _acc(torch.stack(grads, 1))  # (a, k, ...)
            w = g_all[:, 1:] - g_all[:, :1]  # (a, k-1, ...)
            f = _acc(sel[:, 1:] - sel[:, :1])  # (a, k-1)
            wflat = w.flatten(2)
            dual = wflat.norm(dim=2) if norm == "l2" else wflat.abs().sum(dim=2)
            dist = f.abs() / (dual + 1e-12)
            best = dist.argmin(1)
            ar = torch.arange(best.numel(), device=x0.device)
            wb = w[ar, best]  # (a, ...)
            fb = f[ar, best].abs() + 1e-4
            db = dual[ar, best] + 1e-12
            ri = _bview(fb / db.pow(2), wb) * wb if norm == "l2" else _bview(fb / db, wb) * wb.sign()
            r_tot[active] += ri.to(r_tot.dtype)
            xn = x0[active] + (1.0 + overshoot) * r_tot[active]
            if clip is not None:
                xn = xn.clamp(clip[0], clip[1])
            x_cur[active] = xn
            iters[active] += 1
            pred = decision_scores(model, xn).argmax(1)
            flipped = pred != labels[active]
            active = active[~flipped]
        step += 1
    with torch.no_grad():
        adv = decision_scores(model, x_cur).argmax(1)
    return x_cur.detach(), labels, adv, iters, adv != labels


def deepfool(
    model: nn.Module,
    x: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    candidates: int | None = 10,
    overshoot: float = 0.02,
    max_iter: int = 50,
    norm: str = "l2",
    clip: tuple[float, float] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> DeepFoolResult:
    """Batched DeepFool: the minimal perturbation r(x) moving each input across its boundary.

    Args:
        model: any ``nn.Module`` returning class scores; see :func:`decision_scores`
            (log κ is used for Gauss heads). Run in eval mode (restored afterwards).
        x: (N, ...) inputs in the model's input space (pixel space for a KmModel).
        labels: (N,) labels to move away from; default the model's predictions. An input
            not predicted as its label counts as converged with r = 0 and 0 iterations.
        num_classes: the number of classes, checked against the model's output when given.
        candidates: how many classes (the label plus the top others by original score)
            the linearisation considers, as in the reference implementation; ``None``
            means all classes.
        overshoot: the iterate is x + (1 + overshoot) Σ r_i, so it ends just past the
            boundary.
        max_iter: maximum DeepFool steps per input.
        norm: ``"l2"`` (the paper's Algorithm 2) or ``"linf"`` (its ℓ_p variant with
            p = ∞: distances in the dual ℓ₁ norm, steps along sign(w)).
        clip: ``(lo, hi)`` to clamp every iterate to the valid input range, or ``None``.
        batch_size: inputs per batch (default all at once).
        device: where to run (the model is moved there); default the model's device.
        progress: ``progress(done, total)`` after each batch.

    Returns:
        :class:`DeepFoolResult` with ``x_adv``, ``r = x_adv - x`` and its ``norms``.

    Notes:
        At iterate x_i with label l and candidate class k, w_k = ∇f_k - ∇f_l and
        f'_k = f_k - f_l. For ℓ₂ the step is |f'_k̂| / ‖w_k̂‖₂² · w_k̂ with
        k̂ = argmin_k |f'_k| / ‖w_k‖₂; for ℓ∞ it is |f'_k̂| / ‖w_k̂‖₁ · sign(w_k̂) with
        k̂ = argmin_k |f'_k| / ‖w_k‖₁. For an affine classifier one ℓ₂ step lands on the
        nearest pairwise boundary: r = min_k |f_k - f_l| / ‖w_k - w_l‖.
    """
    norm = _check_args(norm, max_iter, overshoot, x, labels)
    dev = model_device(model, device)
    n = x.shape[0]
    bs = max(1, n) if not batch_size else max(1, int(batch_size))
    outs: list[tuple[torch.Tensor, ...]] = []
    nc = 1
    if not x.is_floating_point():
        x = x.float()
    with eval_mode(model):
        if n:
            with torch.no_grad():
                c = int(decision_scores(model, x[:1].to(dev)).shape[1])
            if num_classes is not None and num_classes != c:
                raise ConfigError(f"num_classes={num_classes} but the model outputs {c} scores")
            if c < 2:
                raise ConfigError("DeepFool needs a model with at least 2 classes")
            k = c if candidates is None else max(2, min(int(candidates), c))
            nc = c
        for start in range(0, n, bs):
            xb = x[start : start + bs].to(dev)
            lb = labels[start : start + bs].to(dev) if labels is not None else None
            o = _deepfool_batch(model, xb, lb, k, overshoot, max_iter, norm, clip)
            outs.append((*o, class_confidences(model, o[0]).amax(1).cpu()))
            if progress is not None:
                progress(min(start + bs, n), n)
    return _assemble(outs, x, norm, overshoot, outlier_threshold(model, nc))


def _check_args(norm: str, max_iter: int, overshoot: float, x: torch.Tensor, labels: torch.Tensor | None) -> str:
    """The normalised norm name (``l2`` or ``linf``), or ConfigError naming the bad argument."""
    norm = norm.lower().replace("∞", "inf")
    if norm in ("inf", "l_inf", "linfinity"):
        norm = "linf"
    if norm not in ("l2", "linf"):
        raise ConfigError(f"--norm must be l2 or linf, got {norm!r}")
    if max_iter < 1:
        raise ConfigError("max_iter must be at least 1")
    if overshoot < 0:
        raise ConfigError("overshoot must be >= 0")
    if x.dim() < 2:
        raise ConfigError(f"x must be a batch (N, ...), got shape {tuple(x.shape)}")
    if labels is not None and labels.shape[0] != x.shape[0]:
        raise ConfigError(f"{labels.shape[0]} labels for {x.shape[0]} inputs")
    return norm


def _assemble(outs: list[tuple[torch.Tensor, ...]], x: torch.Tensor, norm: str, overshoot: float,
              threshold: float) -> DeepFoolResult:
    """One :class:`DeepFoolResult` from the batches' (x_adv, labels, adv_labels, iterations,
    converged, conf_adv)."""
    def cat(i: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.cat([o[i] for o in outs]) if outs else torch.zeros(0, dtype=dtype)

    x_adv = cat(0) if outs else x.clone()
    r = x_adv - x.to(x_adv.device, x_adv.dtype)
    return DeepFoolResult(
        conf_adv=cat(5), threshold=threshold, x_adv=x_adv, r=r,
        norms=_flat_norm(r, norm) if x.shape[0] else torch.zeros(0),
        labels=cat(1, torch.long), adv_labels=cat(2, torch.long), iterations=cat(3, torch.long),
        converged=cat(4, torch.bool), norm=norm, overshoot=overshoot,
    )
