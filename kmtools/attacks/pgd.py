"""Projected gradient descent (Madry et al. 2018), batched, ℓ∞ or ℓ₂, on the model's own scores.

For each ε, each image starts at a random point of the ε-ball (``restarts`` times) and takes
``steps`` steps x ← Π(x + α · d), d = sign(∇L) for ℓ∞ and ∇L/‖∇L‖₂ for ℓ₂, where Π
projects onto the ε-ball around the clean image intersected with [0, 1] (clip ∘ ball is
that intersection's projection for ℓ∞ and stays inside it for ℓ₂). Every iterate of every
restart is judged, and each image keeps its best one.

The loss is the margin of the model's decision scores
(:func:`~kmtools.models.scoring.decision_scores`): logits for a softmax network, log κ =
-γ‖f(x) - C_k‖² for a Gauss network, the head's own scores for prototype heads, so each head
is attacked where it decides. Untargeted: max_{k≠y} s_k - s_y; targeted at t: s_t -
max_{k≠t} s_k (maximised; ``loss="ce"`` maximises the cross-entropy of the label instead).

Detector-aware (``adaptive=True``): for heads that flag outliers (the predicted class's
confidence below the threshold, 1/c by default) an attack only counts when the wrong
prediction is *not* flagged, so the loss subtracts relu(log thr - log p_wrong) (log-confidence
of the best wrong class, log κ for a Gauss head) and an image keeps its best iterate by
(effective, fooled, loss). Every result counts "effective" successes (fooled and not
flagged) whichever loss was used (Carlini et al. 2019, "On evaluating adversarial robustness").

Gradient-masking sanity checks (``sanity=True``): accuracy at a large ε (ℓ∞ 1.0, ℓ₂ √D, where
every image is reachable) must be near 0, and a stronger attack (twice the steps, one more
restart) at the largest ε must not raise accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from kmtools.errors import ConfigError
from kmtools.models.scoring import (
    Progress,
    decision_scores,
    eval_mode,
    head_kind_of,
    is_km,
    model_device,
    outlier_threshold,
)
from kmtools.stats import paired_diff, wilson

__all__ = ["NORMS", "PGDResult", "paired_pgd", "pgd", "sanity_checks"]

NORMS = ("linf", "l2")


def log_confidences(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable ``(decision scores, log-confidences)`` (N, classes) from one forward.

    Gauss heads: both are log κ. Softmax: the logits and their log-softmax. Other heads
    with a ``confidences`` rule: their scores and log of that rule.
    """
    if is_km(model):
        f = model.features(x)  # type: ignore[operator]
        head = model.head
        if hasattr(head, "log_kappa"):
            lk = head.log_kappa(f)  # type: ignore[operator]
            return lk, lk
        s = head(f)  # type: ignore[operator]
        fn = getattr(head, "confidences", None)
        if callable(fn):
            c = fn(s)
            return s, c.clamp_min(torch.finfo(c.dtype).tiny).log()
        return s, torch.log_softmax(s, dim=-1)
    s = decision_scores(model, x)
    return s, torch.log_softmax(s, dim=-1)


def _other(s: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return s.scatter(1, cls[:, None], float("-inf")).amax(1)


def _objective(
    s: torch.Tensor, lc: torch.Tensor, y: torch.Tensor, tgt: torch.Tensor | None, loss: str, log_thr: float | None
) -> torch.Tensor:
    """Per-image loss to *maximise*."""
    if loss == "ce":
        obj = nnf.cross_entropy(s, y, reduction="none") if tgt is None else -nnf.cross_entropy(s, tgt, reduction="none")
    elif tgt is None:
        obj = _other(s, y) - s.gather(1, y[:, None])[:, 0]
    else:
        obj = s.gather(1, tgt[:, None])[:, 0] - _other(s, tgt)
    if log_thr is not None:
        wrong = _other(lc, y) if tgt is None else lc.gather(1, tgt[:, None])[:, 0]
        obj = obj - torch.relu(log_thr - wrong)
    return obj


def _status(s: torch.Tensor, lc: torch.Tensor, y: torch.Tensor, tgt: torch.Tensor | None,
            log_thr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(fooled, effective): misclassified (or predicted as the target), and also not flagged."""
    pred = s.argmax(1)
    fooled = pred != y if tgt is None else pred == tgt
    return fooled, fooled & (lc.gather(1, pred[:, None])[:, 0] >= log_thr)


def _random_start(x0: torch.Tensor, eps: float, norm: str, g: torch.Generator) -> torch.Tensor:
    if norm == "linf":
        u = torch.rand(x0.shape, generator=g, device=x0.device, dtype=x0.dtype) * 2 - 1
        return (x0 + eps * u).clamp(0, 1)
    d = x0[0].numel()
    v = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype).flatten(1)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    r = torch.rand(x0.shape[0], 1, generator=g, device=x0.device, dtype=x0.dtype) ** (1.0 / d)
    return (x0 + (eps * r * v).view_as(x0)).clamp(0, 1)


def _project(x: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps)
    else:
        delta = (x - x0).flatten(1)
        nrm = delta.norm(dim=1, keepdim=True)
        delta = delta * torch.clamp(eps / nrm.clamp_min(1e-12), max=1.0)
        x = x0 + delta.view_as(x0)
    return x.clamp(0, 1)


@dataclass
class _Best:
    """Each image's best iterate so far, ranked by (effective?, fooled?, objective)."""

    x: torch.Tensor
    key: torch.Tensor  # (N,) float64 rank
    fooled: torch.Tensor
    effective: torch.Tensor

    def update(self, x: torch.Tensor, obj: torch.Tensor, fooled: torch.Tensor, eff: torch.Tensor,
               adaptive: bool) -> None:
        tier = fooled.double() * 1e6 + (eff.double() * 2e6 if adaptive else 0.0)
        key = tier + obj.detach().double().clamp(-1e5, 1e5)
        better = key > self.key
        self.key = torch.where(better, key, self.key)
        self.x = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x.detach(), self.x)
        self.fooled = torch.where(better, fooled, self.fooled)
        self.effective = torch.where(better, eff, self.effective)


def _attack_batch(
    model: nn.Module, x0: torch.Tensor, y: torch.Tensor, tgt: torch.Tensor | None, eps: float, *, norm: str,
    steps: int, alpha: float, restarts: int, loss: str, log_thr: float, adaptive: bool, g: torch.Generator,
) -> torch.Tensor:
    """Best adversarial iterate per image over ``restarts`` × ``steps`` (x0 itself when ε = 0)."""
    n = x0.shape[0]
    best = _Best(x0.clone(), torch.full((n,), -math.inf, dtype=torch.float64, device=x0.device),
                 torch.zeros(n, dtype=torch.bool, device=x0.device), torch.zeros(n, dtype=torch.bool, device=x0.device))
    if eps == 0 or steps == 0:
        return x0.clone()
    aware = log_thr if adaptive else None
    for _ in range(restarts):
        x = _random_start(x0, eps, norm, g)
        for it in range(steps + 1):
            xg = x.detach().requires_grad_(it < steps)
            with torch.set_grad_enabled(it < steps):
                s, lc = log_confidences(model, xg)
                obj = _objective(s, lc, y, tgt, loss, aware)
            fooled, eff = _status(s.detach(), lc.detach(), y, tgt, log_thr)
            best.update(x, obj, fooled, eff, adaptive)
            if it == steps:
                break
            (grad,) = torch.autograd.grad(obj.sum(), xg)
            if norm == "linf":
                d = grad.sign()
            else:
                gf = grad.flatten(1)
                d = (gf / gf.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(grad)
            x = _project(x.detach() + alpha * d, x0, eps, norm)
    return best.x


@dataclass
class PGDResult:
    """PGD over an ε list for N inputs (per-ε lists aligned with ``eps``; tensors on the CPU).

    Attributes:
        eps: the radii. labels: (N,) labels. clean_preds: (N,) clean predictions.
        preds: (E, N) predictions at each ε's adversarial input; conf: (E, N) their
            confidence (softmax probability or κ); fooled: (E, N) clean-correct inputs
            misclassified (or, targeted, predicted as the target) at ε; outlier: (E, N)
            prediction below ``threshold``.
        x_adv: (E, N, ...) the adversarial inputs (empty when not kept).
        sanity: the gradient-masking checks (see the module docstring), or {}.
    """

    eps: list[float]
    labels: torch.Tensor
    clean_preds: torch.Tensor
    preds: torch.Tensor
    conf: torch.Tensor
    fooled: torch.Tensor
    outlier: torch.Tensor
    x_adv: torch.Tensor
    norm: str = "linf"
    steps: int = 10
    step_size: list[float] = field(default_factory=list)
    restarts: int = 1
    loss: str = "margin"
    adaptive: bool = False
    target: list[int] | None = None
    threshold: float = 0.1
    head_kind: str = "softmax"
    seed: int = 0
    sanity: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def correct_clean(self) -> torch.Tensor:
        return self.clean_preds == self.labels

    @property
    def effective(self) -> torch.Tensor:
        """(E, N) fooled and not flagged as an outlier."""
        return self.fooled & ~self.outlier

    @property
    def robust(self) -> torch.Tensor:
        """(E, N) correct at ε (untargeted: the prediction is still the label; targeted: clean
        correct and not moved to the target)."""
        if self.target is None:
            return self.preds == self.labels[None]
        return self.correct_clean[None] & ~self.fooled

    def accuracy(self) -> list[float]:
        return [float(r.float().mean()) if len(self) else 0.0 for r in self.robust]

    def records(self) -> list[dict[str, Any]]:
        """One dict per input for JSON lines (:meth:`from_records` reads them back):
        ``index`` (position in the batch), ``label``, ``pred`` (clean prediction), ``target``
        (targeted only), and per ε ``adv_pred`` and ``conf`` (float32 values)."""
        out = []
        for i in range(len(self)):
            rec: dict[str, Any] = {
                "index": i, "label": int(self.labels[i]), "pred": int(self.clean_preds[i]),
                "adv_pred": [int(p) for p in self.preds[:, i]], "conf": [float(c) for c in self.conf[:, i]],
            }
            if self.target is not None:
                rec["target"] = int(self.target[i])
            out.append(rec)
        return out

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]], *, eps: Sequence[float], **settings: Any) -> PGDResult:
        """Rebuild a result (without ``x_adv``) from :meth:`records`; ``settings`` are the
        dataclass's other fields (``norm``, ``steps``, ``threshold``, ...)."""
        n, e = len(records), len(eps)
        labels = torch.tensor([int(r["label"]) for r in records], dtype=torch.long)
        clean = torch.tensor([int(r["pred"]) for r in records], dtype=torch.long)
        preds = torch.tensor([r["adv_pred"] for r in records], dtype=torch.long).T.reshape(e, n)
        conf = torch.tensor([r["conf"] for r in records], dtype=torch.float32).T.reshape(e, n)
        tg = [r.get("target") for r in records]
        target = [int(t) for t in tg if t is not None] if n and None not in tg else None
        hit = preds != labels[None] if target is None else preds == torch.tensor(target)[None]
        thr = float(settings.pop("threshold", 0.1))
        return cls(eps=[float(v) for v in eps], labels=labels, clean_preds=clean, preds=preds, conf=conf,
                   fooled=hit & (clean == labels)[None], outlier=conf < thr, x_adv=torch.zeros(0),
                   target=target, threshold=thr, **settings)

    def to_dict(self) -> dict[str, Any]:
        """Per-ε lists: ``accuracy`` (robust accuracy over all N, with ``accuracy_lo``/
        ``accuracy_hi`` 95% Wilson and ``correct``), ``rate`` (fooled / clean-correct =
        ``n``, with ``rate_lo``/``rate_hi``/``fooled``), ``effective_rate`` (fooled and not
        flagged, same keys with the ``effective_`` prefix), ``outlier_share_fooled``;
        ``clean_accuracy`` as a rate dict; settings; ``sanity``."""
        n = len(self)
        att = int(self.correct_clean.sum())
        acc = [wilson(int(r.sum()), n) for r in self.robust]
        fool = [wilson(int(f.sum()), att) for f in self.fooled]
        eff = [wilson(int(e.sum()), att) for e in self.effective]
        pairs = zip(self.outlier, self.fooled, strict=True)
        out_f = [float(o[f].float().mean()) if f.any() else None for o, f in pairs]
        return {
            "attack": "pgd", "norm": self.norm, "steps": self.steps, "step_size": self.step_size,
            "restarts": self.restarts, "loss": self.loss, "adaptive": self.adaptive,
            "targeted": self.target is not None, "head_kind": self.head_kind, "outlier_threshold": self.threshold,
            "seed": self.seed, "images": n,
            "clean_accuracy": wilson(int(self.correct_clean.sum()), n).to_dict(count="correct"),
            "eps": list(self.eps),
            "accuracy": [a.rate for a in acc], "accuracy_lo": [a.lo for a in acc],
            "accuracy_hi": [a.hi for a in acc], "correct": [a.k for a in acc],
            "n": att,
            "rate": [f.rate for f in fool], "rate_lo": [f.lo for f in fool], "rate_hi": [f.hi for f in fool],
            "fooled": [f.k for f in fool],
            "effective_rate": [e.rate for e in eff], "effective_rate_lo": [e.lo for e in eff],
            "effective_rate_hi": [e.hi for e in eff], "effective": [e.k for e in eff],
            "outlier_share_fooled": out_f,
            **({"sanity": self.sanity} if self.sanity else {}),
        }


def _check(x: torch.Tensor, y: torch.Tensor, eps: Sequence[float], norm: str, steps: int, restarts: int,
           loss: str) -> None:
    if x.dim() < 2:
        raise ConfigError(f"PGD needs a batch (N, ...), got shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ConfigError(f"{y.shape[0]} labels for {x.shape[0]} inputs")
    if norm not in NORMS:
        raise ConfigError(f"--lp must be one of {', '.join(NORMS)}, got {norm!r}")
    if steps < 0 or restarts < 1:
        raise ConfigError("--steps must be >= 0 and --restarts >= 1")
    if loss not in ("margin", "ce"):
        raise ConfigError(f"--loss must be margin or ce, got {loss!r}")
    if not eps or any(not (e >= 0) for e in eps):
        raise ConfigError("--eps needs values >= 0, e.g. --eps 0,2/255,8/255")
    if not x.is_floating_point() or (x.numel() and (float(x.min()) < 0 or float(x.max()) > 1)):
        raise ConfigError("PGD inputs must be floats in [0, 1] (pixel space, before normalisation)")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | Sequence[float],
    *,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    restarts: int = 1,
    target: int | Sequence[int] | torch.Tensor | None = None,
    loss: str = "margin",
    adaptive: bool = False,
    threshold: float | None = None,
    sanity: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
    keep_adv: bool = True,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> PGDResult:
    """Batched PGD for every ε of ``eps`` (see the module docstring).

    Args:
        model: a classifier on inputs in [0, 1] (a KmModel or any module returning logits).
        x: (N, ...) inputs in [0, 1]; y: (N,) labels.
        eps: one radius or a list (``parse_eps("0,2/255,8/255")``).
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps per restart. step_size: α (default 2.5 ε / steps).
        restarts: random starts per image (the best iterate over all of them is kept).
        target: a class (or one per input) to reach; ``None``: untargeted.
        loss: ``"margin"`` (default, on the head's own scores) or ``"ce"``.
        adaptive: detector-aware objective (fool while staying above the outlier threshold).
        threshold: outlier threshold on the predicted class's confidence (default the model's).
        sanity: also run the gradient-masking checks.
        seed: seeds the random starts (a torch.Generator per batch, keyed by batch start).
        batch_size: inputs per batch (default all). keep_adv: keep (E, N, ...) ``x_adv``.
        device: where to run (the model is moved there). progress: ``progress(done, total)``.
    """
    eps_l = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    _check(x, y, eps_l, norm, steps, restarts, loss)
    dev = model_device(model, device)
    n = x.shape[0]
    y = y.long().cpu()
    tgt_all = None if target is None else torch.as_tensor(target, dtype=torch.long).flatten().expand(n).clone()
    bs = n if not batch_size else int(batch_size)
    alphas = [step_size if step_size is not None else (2.5 * e / max(steps, 1)) for e in eps_l]
    with eval_mode(model), torch.no_grad():
        s0 = log_confidences(model, x[:1].to(dev))[0] if n else torch.zeros(1, 2)
    nc = s0.shape[1]
    thr = float(threshold) if threshold is not None else outlier_threshold(model, nc)
    log_thr = math.log(thr) if thr > 0 else -math.inf
    preds = torch.empty(len(eps_l), n, dtype=torch.long)
    conf = torch.empty(len(eps_l), n)
    clean = torch.empty(n, dtype=torch.long)
    advs: list[list[torch.Tensor]] = [[] for _ in eps_l]
    work = len(eps_l) * n
    with eval_mode(model):
        for start in range(0, n, max(bs, 1)):
            sl = slice(start, min(start + bs, n))
            xb, yb = x[sl].to(dev), y[sl].to(dev)
            tb = tgt_all[sl].to(dev) if tgt_all is not None else None
            g = torch.Generator(device=dev).manual_seed(int(seed) * 1_000_003 + start)
            with torch.no_grad():
                clean[sl] = log_confidences(model, xb)[0].argmax(1).cpu()
            for i, (e, a) in enumerate(zip(eps_l, alphas, strict=True)):
                xa = _attack_batch(model, xb, yb, tb, e, norm=norm, steps=steps, alpha=a, restarts=restarts,
                                   loss=loss, log_thr=log_thr, adaptive=adaptive, g=g)
                with torch.no_grad():
                    s, lc = log_confidences(model, xa)
                preds[i, sl] = s.argmax(1).cpu()
                conf[i, sl] = lc.gather(1, s.argmax(1)[:, None])[:, 0].exp().float().cpu()
                if keep_adv:
                    advs[i].append(xa.detach().cpu())
                if progress is not None:
                    progress(i * n + sl.stop, work)
    correct = clean == y
    hit = preds != y[None] if tgt_all is None else preds == tgt_all[None]
    res = PGDResult(
        eps=eps_l, labels=y, clean_preds=clean, preds=preds, conf=conf, fooled=hit & correct[None],
        outlier=conf < thr, x_adv=torch.stack([torch.cat(a) for a in advs]) if keep_adv and n else torch.zeros(0),
        norm=norm, steps=steps, step_size=alphas, restarts=restarts, loss=loss, adaptive=adaptive,
        target=None if tgt_all is None else [int(t) for t in tgt_all], threshold=thr,
        head_kind=head_kind_of(model), seed=seed,
    )
    if sanity and n:
        res.sanity = sanity_checks(model, x, y, res, target=target, batch_size=batch_size, device=dev)
    return res


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, res: PGDResult, *,
                  target: int | Sequence[int] | torch.Tensor | None = None, batch_size: int | None = None,
                  device: str | torch.device | None = None) -> dict[str, Any]:
    """Gradient-masking checks for ``res`` (a PGD result on ``x``, ``y``): accuracy at a large
    ε must be ≈ 0 (≤ 5%); twice the steps and one more restart at the largest ε must not raise
    accuracy (by more than 2 inputs, for the randomness of the starts). Carlini et al. 2019,
    Sec. 5 ("On evaluating adversarial robustness")."""
    n = len(res)
    dev = model_device(model, device)
    big = 1.0 if res.norm == "linf" else math.sqrt(x[0].numel())
    kw: dict[str, Any] = dict(norm=res.norm, target=target, loss=res.loss, adaptive=res.adaptive,
                              threshold=res.threshold, seed=res.seed + 1, batch_size=batch_size,
                              keep_adv=False, device=dev)
    large = pgd(model, x, y, [big], steps=max(res.steps, 10), restarts=res.restarts, **kw)
    e_max = max(res.eps)
    strong = pgd(model, x, y, [e_max], steps=2 * max(res.steps, 1), restarts=res.restarts + 1, **kw)
    base_acc = res.accuracy()[res.eps.index(e_max)]
    acc_large = large.to_dict()
    acc_strong = strong.accuracy()[0]
    return {
        "large_eps": big,
        "accuracy_at_large_eps": acc_large["accuracy"][0],
        "accuracy_at_large_eps_hi": acc_large["accuracy_hi"][0],
        "large_eps_ok": acc_large["accuracy"][0] <= 0.05,
        "eps_max": e_max,
        "accuracy_at_eps_max": base_acc,
        "stronger": {"steps": 2 * max(res.steps, 1), "restarts": res.restarts + 1, "accuracy": acc_strong},
        "stronger_ok": acc_strong <= base_acc + 2.0 / n,
        "passed": acc_large["accuracy"][0] <= 0.05 and acc_strong <= base_acc + 2.0 / n,
    }


def paired_pgd(a: PGDResult, b: PGDResult) -> list[dict[str, Any]]:
    """Per ε shared by both: robust accuracy of ``b`` minus ``a`` on the same inputs, with
    Newcombe's interval and McNemar's exact test (inputs must be the same, in order), and
    under ``effective`` the same for the effective success (fooled and not flagged) over the
    inputs both models classify correctly."""
    if len(a) != len(b) or not torch.equal(a.labels, b.labels):
        raise ConfigError("paired PGD comparison needs the same inputs for both models")
    both = np.asarray(a.correct_clean & b.correct_clean)
    out = []
    for i, e in enumerate(a.eps):
        if e in b.eps:
            j = b.eps.index(e)
            d = paired_diff(np.asarray(a.robust[i]), np.asarray(b.robust[j])).to_dict()
            eff = paired_diff(np.asarray(a.effective[i])[both], np.asarray(b.effective[j])[both]).to_dict()
            out.append({"eps": e, **d, "effective": eff})
    return out
