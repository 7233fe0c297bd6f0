"""One-pixel attack (Su, Vargas & Sakurai 2019) by batched differential evolution.

A candidate is ``pixels`` tuples (y, x, c_1, ..., c_C): a pixel position and its new
colour. Differential evolution (DE/rand/1, F = 0.5, no crossover, as in Su et al.) evolves
a population of ``popsize`` candidates per image: child_i = a + F (b - c) from three
random distinct members a, b, c other than i; the child replaces its parent when its
fitness is lower. A child coordinate outside the image or the colour range is drawn again
uniformly inside it (``bounds="resample"``, scipy's ``differential_evolution`` and so
torchattacks) or clamped (``"clip"``). Every generation of every image in the batch is one
forward pass: the B × P perturbed images are built on the device by gather + scatter (no
Python loop over candidates or pixels), in chunks of at most ``chunk`` images, under bf16
autocast on CUDA.

Fitness (minimised, ``fitness=``): ``"confidence"``, Su et al.'s, the confidence of the
true class, ``model.confidences(x)[y]``: the softmax probability for a softmax network and
the Gauss-confidence κ_y(x) = exp(-γ‖f(x) - C_y‖²) for a Gauss network (paper Sec. 5);
``"margin"``, log p_y - max_{k≠y} log p_k (logit gap for softmax, -γ(‖f-C_y‖² - ‖f-C_k‖²)
for Gauss), which is negative exactly when the image is fooled and does not vanish where κ
underflows; ``"both"`` runs both and counts an image fooled when either fools it. With
``target`` they aim at the target class instead. ``adaptive=True`` (detector-aware) counts
a candidate as fooling only when its prediction is not flagged as an outlier.

Stopping, per image: on success (``success="best"``, the default: the best member of the
population fools, as torchattacks' callback on scipy's best solution; ``"any"``: any
evaluated child fools), after ``maxiter`` generations, or (``tol``) when the population's
fitness has converged, std ≤ tol · |mean| as in scipy. Finished images leave the batch and
queued images take their place, so the forward passes stay full. Images the model already
gets wrong are skipped and counted, not attacked. The reported image is the best member's
(``"any"``: the fooling child's).

Randomness is a counter-based hash of (seed, image index, generation, candidate): an
image's search does not depend on the batch size, the chunk size or which other images
share its batch, so the same seed attacks the same image the same way in every run and
for every model (``--compare``). The image index is the caller's (``index=``): a shard of a
dataset, or the images left after an interrupted run, are attacked exactly as in one
run over the whole set.

Each image's result is final when it stops (its adversarial image is judged in float32
then), so a ``callback`` receives the finished images while the others are still evolving;
the CLI appends them to a JSON-lines file and rebuilds the result from those records
(:meth:`OnePixelResult.from_records`) to resume an interrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from kmtools.errors import ConfigError
from kmtools.models.scoring import (
    Progress,
    class_confidences,
    class_log_confidences,
    eval_mode,
    head_kind_of,
    model_device,
    outlier_threshold,
)
from kmtools.stats import mcnemar, paired_diff, wilson

__all__ = ["BOUNDS", "FITNESSES", "SUCCESS_RULES", "OnePixelResult", "class_confidences", "onepixel", "paired"]

_M32 = 0xFFFFFFFF
_VERDICT_BATCH = 32
"""Images per float32 verdict forward pass (clean images, final adversarial images)."""


# ------------------------------------------------------------------ counter-based RNG
def _hash(v: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash on int64 tensors holding values in [0, 2^32)."""
    v = v ^ (v >> 16)
    v = (v * 0x7FEB352D) & _M32
    v = v ^ (v >> 15)
    v = (v * 0x846CA68B) & _M32
    return v ^ (v >> 16)


def _uniform(key: torch.Tensor, gen: torch.Tensor | int, stream: int, shape: Sequence[int]) -> torch.Tensor:
    """U[0, 1) float32 of shape (S, *shape), a function of (key[s], gen[s], stream, element)."""
    s = key.shape[0]
    dev = key.device
    g = gen if isinstance(gen, torch.Tensor) else torch.full((s,), int(gen), dtype=torch.long, device=dev)
    base = _hash(key ^ _hash((g * 8 + stream) & _M32))  # (S,)
    n = math.prod(shape)
    ctr = _hash(torch.arange(n, dtype=torch.long, device=dev))
    h = _hash(base[:, None] ^ ctr[None, :])
    return ((h >> 8).float() * (1.0 / (1 << 24))).view(s, *shape)


def _image_keys(seed: int, index: torch.Tensor) -> torch.Tensor:
    k = _hash(torch.full_like(index, int(seed) & _M32))
    return _hash(k ^ _hash(index & _M32))


def _distinct_parents(key: torch.Tensor, gen: torch.Tensor, p: int) -> tuple[torch.Tensor, ...]:
    """Three distinct indices in [0, p) other than the candidate's own, per (slot, candidate)."""
    u = _uniform(key, gen, 1, (p, 3))
    s = key.shape[0]
    own = torch.arange(p, device=key.device).expand(s, p)
    a = (u[..., 0] * (p - 1)).long().clamp_max(p - 2)
    a = a + (a >= own).long()
    lo, hi = torch.minimum(own, a), torch.maximum(own, a)
    b = (u[..., 1] * (p - 2)).long().clamp_max(p - 3)
    b = b + (b >= lo).long()
    b = b + (b >= hi).long()
    ex = torch.sort(torch.stack([own, a, b], -1), dim=-1).values
    c = (u[..., 2] * (p - 3)).long().clamp_max(p - 4)
    for j in range(3):
        c = c + (c >= ex[..., j]).long()
    return a, b, c


# ------------------------------------------------------------------ candidate images
def _decode(cand: torch.Tensor, pixels: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, pixels*(2+C)) parameters -> flat positions (m, pixels) and colours (m, pixels, C).

    When two pixels of a candidate share a position the later one wins (its colour is
    copied to the earlier one, so the scatter is deterministic).
    """
    m = cand.shape[0]
    c = cand.view(m, pixels, -1)
    row = c[..., 0].floor().clamp(0, h - 1).long()
    col = c[..., 1].floor().clamp(0, w - 1).long()
    lin = row * w + col
    vals = c[..., 2:].clamp(0.0, 1.0)
    if pixels > 1:
        eq = lin[:, :, None] == lin[:, None, :]
        idx = torch.arange(pixels, device=cand.device)
        last = (eq.long() * idx).argmax(-1)
        vals = vals.gather(1, last[..., None].expand(-1, -1, vals.shape[-1]))
    return lin, vals


def _build(
    base: torch.Tensor, slot: torch.Tensor, cand: torch.Tensor, pixels: int, nhwc: bool
) -> torch.Tensor:
    """Perturbed images (m, C, H, W): image ``base[slot[j]]`` with candidate ``cand[j]`` applied.

    ``base`` is (S, H, W, C) when ``nhwc`` (the result is then a channels-last view),
    else (S, C, H, W).
    """
    m = cand.shape[0]
    if nhwc:
        _, h, w, ch = base.shape
        lin, vals = _decode(cand, pixels, h, w)
        img = base[slot].view(m, h * w, ch)
        img.scatter_(1, lin[..., None].expand(m, pixels, ch), vals.to(img.dtype))
        return img.view(m, h, w, ch).permute(0, 3, 1, 2)
    _, ch, h, w = base.shape
    lin, vals = _decode(cand, pixels, h, w)
    img = base[slot].view(m, ch, h * w)
    img.scatter_(2, lin[:, None, :].expand(m, ch, pixels), vals.transpose(1, 2).to(img.dtype))
    return img.view(m, ch, h, w)


# ------------------------------------------------------------------------- result
@dataclass
class OnePixelResult:
    """One-pixel attack result for N images (per-image tensors on the CPU).

    Attributes:
        index: (N,) position of each image in the input batch.
        labels: (N,) true labels.
        skipped: (N,) True for images the model already got wrong (or, targeted, that are
            already predicted as the target): counted, not attacked.
        success: (N,) True where ``x_adv`` fools the model (prediction != label, or ==
            target), judged in float32.
        adv_labels: (N,) prediction at ``x_adv`` (the clean prediction when skipped).
        preds: (N,) clean predictions; conf_clean: (N,) their confidence.
        conf_before: (N,) confidence of the true class on the clean image.
        conf_adv: (N,) confidence of the predicted class at ``x_adv``.
        outlier: (N,) predicted-class confidence at ``x_adv`` below ``threshold``
            (meaningful for Gauss nets; a softmax's top probability is never below 1/c).
        pixel: (N, pixels, 2 + C) the best candidate: row (y), column (x), colour
            (NaN when skipped).
        generations: (N,) DE generations run (0: the initial population decided).
        evaluations: (N,) candidate images evaluated.
        x_adv: (N, C, H, W) adversarial images (the best candidate applied; equal to the
            input when skipped), on the input's device.
    """

    index: torch.Tensor
    labels: torch.Tensor
    skipped: torch.Tensor
    success: torch.Tensor
    adv_labels: torch.Tensor
    preds: torch.Tensor
    conf_clean: torch.Tensor
    conf_before: torch.Tensor
    conf_adv: torch.Tensor
    outlier: torch.Tensor
    pixel: torch.Tensor
    generations: torch.Tensor
    evaluations: torch.Tensor
    x_adv: torch.Tensor
    pixels: int = 1
    popsize: int = 400
    maxiter: int = 100
    target: list[int] | None = None
    threshold: float = 0.1
    head_kind: str = "softmax"
    seed: int = 0
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    success_by: dict[str, torch.Tensor] = field(default_factory=dict)
    effective_by: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def effective(self) -> torch.Tensor:
        """(N,) fooled *and* not flagged as an outlier (confidence of the wrong prediction at
        or above ``threshold``): the attacks a detector-equipped model does not catch."""
        return self.success & ~self.skipped & ~self.outlier

    @property
    def robust(self) -> torch.Tensor:
        """(N,) correctly classified and not fooled (robust accuracy's per-image outcome)."""
        return (self.preds == self.labels) & ~(self.success & ~self.skipped)

    def outcomes(self) -> dict[str, np.ndarray]:
        """Per-image boolean outcomes aligned with ``index``, for paired tests (McNemar):
        ``attacked``, ``fooled``, ``effective``, ``robust`` and, for ``fitness="both"``,
        ``fooled_<fitness>`` / ``effective_<fitness>``."""
        out = {
            "attacked": (~self.skipped).numpy(),
            "fooled": (self.success & ~self.skipped).numpy(),
            "effective": self.effective.numpy(),
            "robust": self.robust.numpy(),
        }
        for k, v in self.success_by.items():
            out[f"fooled_{k}"] = (v & ~self.skipped).numpy()
        for k, v in self.effective_by.items():
            out[f"effective_{k}"] = (v & ~self.skipped).numpy()
        return out

    @property
    def attacked(self) -> int:
        return int((~self.skipped).sum())

    @property
    def fooled(self) -> int:
        return int((self.success & ~self.skipped).sum())

    @property
    def rate(self) -> float:
        """Attack rate: fooled / attacked (0 when nothing was attacked)."""
        return self.fooled / self.attacked if self.attacked else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Summary: counts, attack rate, mean confidence of fooled predictions, outlier share.

        Keys: ``accuracy`` and ``mean_confidence`` (predicted class, clean images) over all
        N images; ``attacked``, ``skipped``, ``fooled``, ``rate`` = fooled / attacked with
        its 95% Wilson interval ``rate_lo``/``rate_hi`` and ``n`` = attacked; ``effective``
        (fooled and not flagged as an outlier, same keys); ``robust_accuracy`` (correct and
        not fooled, over all N images); ``fitness``, ``success_rule``, ``bounds``,
        ``adaptive``; ``by_fitness`` (each fitness's rate and their McNemar test) for
        ``fitness="both"``;
        ``mean_conf_fooled`` (confidence of the fooled predictions); ``outlier_share``
        (share of fooled predictions below ``threshold``). Wall time is kept out of the
        summary (same seed, same summary): see :meth:`throughput`.
        """
        fooled = self.success & ~self.skipped
        att = ~self.skipped
        n = len(self)
        evals = int(self.evaluations.sum())
        st = self.settings
        by: dict[str, Any] = {}
        for k, v in self.success_by.items():
            by[k] = wilson(int((v & att).sum()), self.attacked).to_dict(count="fooled")
            if k in self.effective_by:
                by[k]["effective"] = wilson(int((self.effective_by[k] & att).sum()), self.attacked).to_dict(
                    count="fooled")
        if {"confidence", "margin"} <= set(self.success_by):
            by["mcnemar"] = mcnemar(self.success_by["confidence"][att].numpy(),
                                    self.success_by["margin"][att].numpy()).to_dict()
        return {
            "attack": "onepixel",
            "head_kind": self.head_kind,
            "pixels": self.pixels,
            "popsize": self.popsize,
            "maxiter": self.maxiter,
            "targeted": self.target is not None,
            "seed": self.seed,
            "images": n,
            "accuracy": int((self.preds == self.labels).sum()) / n if n else None,
            "mean_confidence": float(self.conf_clean.mean()) if n else None,
            "attacked": self.attacked,
            "skipped": int(self.skipped.sum()),
            **wilson(self.fooled, self.attacked).to_dict(count="fooled"),
            "effective": wilson(int(self.effective.sum()), self.attacked).to_dict(count="fooled"),
            "robust_accuracy": wilson(int(self.robust.sum()), n).to_dict(count="correct"),
            "fitness": st.get("fitness", "confidence"),
            "success_rule": st.get("success", "any"),
            "bounds": st.get("bounds", "clip"),
            "adaptive": bool(st.get("adaptive", False)),
            **({"by_fitness": by} if by else {}),
            "mean_conf_fooled": float(self.conf_adv[fooled].mean()) if fooled.any() else None,
            "outlier_share": float(self.outlier[fooled].float().mean()) if fooled.any() else None,
            "outlier_threshold": self.threshold,
            "generations_mean": float(self.generations[att].float().mean()) if att.any() else None,
            "evaluations": evals,
            **({"settings": self.settings} if self.settings else {}),
        }

    def throughput(self) -> dict[str, float | None]:
        """Wall time, attacked images per second and candidate images scored per second."""
        evals = int(self.evaluations.sum())
        sec = self.seconds
        return {
            "seconds": sec,
            "images_per_s": self.attacked / sec if sec > 0 else None,
            "candidates_per_s": evals / sec if sec > 0 else None,
        }

    def records(self) -> list[dict[str, Any]]:
        """One dict per image, for JSON lines (:meth:`from_records` reads them back exactly).

        Keys: ``index``, ``label``, ``skipped``, ``success``, ``pred`` (clean prediction),
        ``conf_clean`` (its confidence), ``conf_before`` (true class, clean), ``adv_label``,
        ``conf_adv`` (predicted class at x̃), ``outlier``, ``pixels`` (``[{"x", "y",
        "value"}]``, ``None`` when skipped), ``generations``, ``evaluations`` and, when
        targeted, ``target``. Floats are the exact float32 values.
        """
        out = []
        for i in range(len(self)):
            skipped = bool(self.skipped[i])
            px = None
            if not skipped:
                px = [
                    {"x": int(p[1]), "y": int(p[0]), "value": [float(v) for v in p[2:]]}
                    for p in self.pixel[i]
                ]
            rec: dict[str, Any] = {
                "index": int(self.index[i]),
                "label": int(self.labels[i]),
                "skipped": skipped,
                "success": bool(self.success[i]) and not skipped,
                "pred": int(self.preds[i]),
                "conf_clean": float(self.conf_clean[i]),
                "conf_before": float(self.conf_before[i]),
                "adv_label": int(self.adv_labels[i]),
                "conf_adv": float(self.conf_adv[i]),
                "outlier": bool(self.outlier[i]),
                "pixels": px,
                "generations": int(self.generations[i]),
                "evaluations": int(self.evaluations[i]),
            }
            if self.target is not None:
                rec["target"] = int(self.target[i])
            if self.success_by:
                rec["success_by"] = {k: bool(v[i]) for k, v in self.success_by.items()}
                rec["effective_by"] = {k: bool(v[i]) for k, v in self.effective_by.items()}
            out.append(rec)
        return out

    def take(self, idx: torch.Tensor | Sequence[int]) -> OnePixelResult:
        """The result for the images at positions ``idx`` (same settings)."""
        i = torch.as_tensor(idx, dtype=torch.long).cpu()
        per_image = {
            name: getattr(self, name)[i.to(getattr(self, name).device)]
            for name in (
                "index", "labels", "skipped", "success", "adv_labels", "preds", "conf_clean",
                "conf_before", "conf_adv", "outlier", "pixel", "generations", "evaluations", "x_adv",
            )
        }
        tgt = None if self.target is None else [self.target[int(j)] for j in i]
        return replace(self, **per_image, target=tgt, success_by={k: v[i] for k, v in self.success_by.items()},
                       effective_by={k: v[i] for k, v in self.effective_by.items()})

    @classmethod
    def from_records(
        cls,
        records: Sequence[dict[str, Any]],
        x: torch.Tensor,
        *,
        pixels: int,
        popsize: int,
        maxiter: int,
        threshold: float,
        head_kind: str = "softmax",
        seed: int = 0,
        settings: dict[str, Any] | None = None,
    ) -> OnePixelResult:
        """Rebuild a result from :meth:`records` (``x[i]`` is the image of ``records[i]``).

        ``x_adv`` is ``x`` with each record's pixels applied, bit for bit the image the
        attack judged. ``seconds`` is 0 (wall time is not part of the records).
        """
        n = len(records)
        if x.shape[0] != n:
            raise ConfigError(f"{n} records for {x.shape[0]} images")
        ch = x.shape[1] if x.dim() == 4 else 1
        d = pixels * (2 + ch)

        def col(key: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([r[key] for r in records], dtype=dtype)

        pix = torch.full((n, d), float("nan"))
        for i, r in enumerate(records):
            if r.get("pixels"):
                pix[i] = torch.tensor([[p["y"], p["x"], *p["value"]] for p in r["pixels"]]).flatten()
        skipped = col("skipped", torch.bool) if n else torch.zeros(0, dtype=torch.bool)
        x_adv = x.clone()
        att = (~skipped).nonzero().flatten()
        if att.numel():
            imgs = _build(x[att].float(), torch.arange(att.numel()), pix[att], pixels, False)
            x_adv[att] = imgs.to(x.dtype)
        targets = [r.get("target") for r in records]
        by_keys = list(records[0].get("success_by", {})) if n else []
        eff_keys = list(records[0].get("effective_by", {})) if n else []
        return cls(
            success_by={k: torch.tensor([bool(r["success_by"][k]) for r in records]) for k in by_keys},
            effective_by={k: torch.tensor([bool(r["effective_by"][k]) for r in records]) for k in eff_keys},
            index=col("index", torch.long),
            labels=col("label", torch.long),
            skipped=skipped,
            success=col("success", torch.bool) if n else torch.zeros(0, dtype=torch.bool),
            adv_labels=col("adv_label", torch.long),
            preds=col("pred", torch.long),
            conf_clean=col("conf_clean", torch.float32),
            conf_before=col("conf_before", torch.float32),
            conf_adv=col("conf_adv", torch.float32),
            outlier=col("outlier", torch.bool) if n else torch.zeros(0, dtype=torch.bool),
            pixel=pix.view(n, pixels, 2 + ch),
            generations=col("generations", torch.long),
            evaluations=col("evaluations", torch.long),
            x_adv=x_adv,
            pixels=pixels,
            popsize=popsize,
            maxiter=maxiter,
            target=[int(t) for t in targets if t is not None] if n and None not in targets else None,
            threshold=threshold,
            head_kind=head_kind,
            seed=seed,
            settings=dict(settings or {}),
        )


# ------------------------------------------------------------------------- attack
FITNESSES = ("confidence", "margin", "both")
SUCCESS_RULES = ("best", "any")
BOUNDS = ("resample", "clip")


def _use_amp(dev: torch.device, amp: bool) -> bool:
    """Search under bf16 autocast (and confirm successes in float32): CUDA only."""
    return bool(amp and dev.type == "cuda")


def _use_nhwc(dev: torch.device) -> bool:
    """Build candidate images channels-last (what cuDNN's bf16 convolutions prefer): CUDA only."""
    return dev.type == "cuda"


def _best_other(logc: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """max_{k != cls} logc[:, k], shape (N,)."""
    return logc.scatter(1, cls[:, None], float("-inf")).amax(1)


def _fitness(
    logc: torch.Tensor,
    lab: torch.Tensor,
    tgt: torch.Tensor | None,
    kind: str = "confidence",
    log_thr: float | None = None,
) -> torch.Tensor:
    """Fitness to minimise, from log-confidences (N, classes).

    ``confidence``: the true class's confidence p_y (softmax probability or κ_y), Su et al.'s
    objective; targeted: -p_t. ``margin``: log p_y - max_{k≠y} log p_k (targeted:
    max_{k≠t} log p_k - log p_t), negative exactly when the image is fooled. With
    ``log_thr`` (detector-aware) the shortfall of the best wrong class below the outlier
    threshold, relu(log thr - log p_wrong), is added, so an image flagged as an outlier
    is worse than one that is not.
    """
    if kind == "margin":
        if tgt is None:
            fit = logc.gather(1, lab[:, None])[:, 0] - _best_other(logc, lab)
        else:
            fit = _best_other(logc, tgt) - logc.gather(1, tgt[:, None])[:, 0]
    elif tgt is None:
        fit = logc.gather(1, lab[:, None])[:, 0].exp()
    else:
        fit = -logc.gather(1, tgt[:, None])[:, 0].exp()
    if log_thr is not None:
        wrong = _best_other(logc, lab) if tgt is None else logc.gather(1, tgt[:, None])[:, 0]
        fit = fit + torch.relu(log_thr - wrong)
    return fit


def _fools(
    logc: torch.Tensor, lab: torch.Tensor, tgt: torch.Tensor | None, log_thr: float | None = None
) -> torch.Tensor:
    """Misclassified (or predicted as the target); with ``log_thr`` also not flagged."""
    pred = logc.argmax(1)
    ok = pred != lab if tgt is None else pred == tgt
    if log_thr is not None:
        ok = ok & (logc.amax(1) >= log_thr)
    return ok


@dataclass
class _Spec:
    """Validated settings of one differential-evolution run."""

    pixels: int
    p: int
    maxiter: int
    F: float
    tol: float | None
    fitness: str
    success: str
    bounds: str
    log_thr: float | None  # detector-aware: log of the outlier threshold
    seed: int
    dev: torch.device
    bs: int
    chunk: int
    amp: bool
    nhwc: bool
    shape: tuple[int, int, int]  # C, H, W
    backend: str = "eager"  # candidate scoring (kmtools.scoring_backends); verdicts stay eager float32

    @property
    def confirm(self) -> bool:
        """Confirm candidate successes in eager float32 (the search scored them another way)."""
        return self.amp or self.backend != "eager"

    @property
    def d(self) -> int:
        return self.pixels * (2 + self.shape[0])


class _Scorer:
    """Log-confidences of candidate images (bf16 search, or a scoring backend) and float32
    eager verdicts."""

    def __init__(self, model: nn.Module, backend: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.model = model
        self.backend = backend

    def __call__(self, imgs: torch.Tensor, use_amp: bool) -> torch.Tensor:
        if self.backend is not None:
            return self.backend(imgs).to(imgs.device)
        return class_log_confidences(self.model, imgs, amp=use_amp).float()

    def f32(self, imgs: torch.Tensor) -> torch.Tensor:
        """float32 verdicts in forward passes of exactly ``_VERDICT_BATCH`` images (padded), so
        an image's verdict does not depend on how many others are judged with it (kernels
        may round differently for other batch sizes)."""
        parts = []
        for s in range(0, imgs.shape[0], _VERDICT_BATCH):
            part = imgs[s : s + _VERDICT_BATCH]
            k = part.shape[0]
            if k < _VERDICT_BATCH:
                part = torch.cat([part, part[:1].expand(_VERDICT_BATCH - k, *part.shape[1:])])
            parts.append(class_log_confidences(self.model, part).float()[:k])
        return torch.cat(parts) if parts else torch.zeros(0, 1, device=imgs.device)


class _Slots:
    """The images being evolved (one slot each) and their populations, on the device."""

    def __init__(self, spec: _Spec, targeted: bool, dtype: torch.dtype) -> None:
        ch, h, w = spec.shape
        dev = spec.dev
        self.spec = spec
        self.base = torch.empty((0, h, w, ch) if spec.nhwc else (0, ch, h, w), device=dev, dtype=dtype)
        self.img = torch.empty(0, dtype=torch.long)  # position in x of each slot (CPU)
        self.keys = torch.empty(0, dtype=torch.long, device=dev)
        self.lab = torch.empty(0, dtype=torch.long, device=dev)
        self.tgt: torch.Tensor | None = torch.empty(0, dtype=torch.long, device=dev) if targeted else None
        self.pop = torch.empty(0, spec.p, spec.d, device=dev)
        self.fit = torch.empty(0, spec.p, device=dev)
        self.pfool = torch.empty(0, spec.p, dtype=torch.bool, device=dev)
        self.gen = torch.empty(0, dtype=torch.long, device=dev)
        hi_pos = torch.tensor([float(h), float(w)] + [1.0] * ch, device=dev).repeat(spec.pixels)
        is_pos = torch.tensor([True, True] + [False] * ch, device=dev).repeat(spec.pixels)
        self.lo = torch.zeros(spec.d, device=dev)
        self.hi = torch.where(is_pos, hi_pos - 1e-4, hi_pos)

    def __len__(self) -> int:
        return int(self.img.numel())

    def add(self, ti: torch.Tensor, xi: torch.Tensor, ids: torch.Tensor, lab: torch.Tensor,
            tgt: torch.Tensor | None) -> None:
        """Append images ``ti`` (positions in x) with their initial populations (Su et al.:
        positions uniform over the image, colours N(128, 127) on 0..255, clipped)."""
        sp, dev = self.spec, self.spec.dev
        ch, h, w = sp.shape
        k = int(ti.numel())
        self.base = torch.cat([self.base, xi.permute(0, 2, 3, 1).contiguous() if sp.nhwc else xi])
        tk = _image_keys(sp.seed, ids.to(dev))
        self.img = torch.cat([self.img, ti])
        self.keys = torch.cat([self.keys, tk])
        self.lab = torch.cat([self.lab, lab.to(dev)])
        if self.tgt is not None and tgt is not None:
            self.tgt = torch.cat([self.tgt, tgt.to(dev)])
        u = _uniform(tk, 0, 0, (sp.p, sp.pixels, 2 + ch))
        z = _uniform(tk, 0, 2, (sp.p, sp.pixels, ch))
        init = torch.empty(k, sp.p, sp.pixels, 2 + ch, device=dev)
        init[..., 0] = u[..., 0] * h
        init[..., 1] = u[..., 1] * w
        r = torch.sqrt(-2.0 * torch.log1p(-z.clamp_max(1 - 2**-24)))  # Box-Muller
        normal = r * torch.cos(2 * math.pi * u[..., 2:])
        init[..., 2:] = (128.0 + 127.0 * normal).clamp(0, 255) / 255.0
        self.pop = torch.cat([self.pop, init.view(k, sp.p, sp.d).clamp(self.lo, self.hi)])
        self.fit = torch.cat([self.fit, torch.full((k, sp.p), float("inf"), device=dev)])
        self.pfool = torch.cat([self.pfool, torch.zeros(k, sp.p, dtype=torch.bool, device=dev)])
        self.gen = torch.cat([self.gen, torch.full((k,), -1, dtype=torch.long, device=dev)])

    def keep(self, keep: torch.Tensor) -> None:
        self.base, self.keys, self.lab = self.base[keep], self.keys[keep], self.lab[keep]
        self.img = self.img[keep.cpu()]
        self.tgt = self.tgt[keep] if self.tgt is not None else None
        self.pop, self.fit, self.pfool, self.gen = self.pop[keep], self.fit[keep], self.pfool[keep], self.gen[keep]

    def candidates(self) -> torch.Tensor:
        """(S, P, d): DE/rand/1 children without crossover (child = a + F (b - c)); slots that
        have not been evaluated yet evaluate their initial population. Coordinates that
        leave the box are resampled uniformly inside it (scipy's rule) or clamped to it."""
        sp = self.spec
        a, b, c = _distinct_parents(self.keys, self.gen + 1, sp.p)
        ar = torch.arange(len(self), device=sp.dev)[:, None]
        child = self.pop[ar, a] + sp.F * (self.pop[ar, b] - self.pop[ar, c])
        if sp.bounds == "resample":
            out = (child < self.lo) | (child > self.hi)
            fresh = self.lo + _uniform(self.keys, self.gen + 1, 3, (sp.p, sp.d)) * (self.hi - self.lo)
            child = torch.where(out, fresh, child)
        else:
            child = child.clamp(self.lo, self.hi)
        return torch.where((self.gen < 0)[:, None, None], self.pop, child)


def _evaluate(
    slots: _Slots, cand: torch.Tensor, scorer: _Scorer, spec: _Spec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fitness and fooling flag (S, P) of every candidate: S × P images, in chunks."""
    s_n, p = len(slots), spec.p
    flat = cand.view(s_n * p, spec.d)
    slot = torch.arange(s_n, device=spec.dev).repeat_interleave(p)
    lab_f = slots.lab.repeat_interleave(p)
    tgt_f = slots.tgt.repeat_interleave(p) if slots.tgt is not None else None
    cfit = torch.empty(s_n * p, device=spec.dev)
    cfool = torch.empty(s_n * p, dtype=torch.bool, device=spec.dev)
    for s in range(0, s_n * p, spec.chunk):
        e = min(s + spec.chunk, s_n * p)
        logc = scorer(_build(slots.base, slot[s:e], flat[s:e], spec.pixels, spec.nhwc), spec.amp)
        tt = tgt_f[s:e] if tgt_f is not None else None
        cfit[s:e] = _fitness(logc, lab_f[s:e], tt, spec.fitness, spec.log_thr)
        cfool[s:e] = _fools(logc, lab_f[s:e], tt, spec.log_thr)
    return cfit.view(s_n, p), cfool.view(s_n, p)


def _decide(
    slots: _Slots, cand: torch.Tensor, cfit: torch.Tensor, cfool: torch.Tensor, scorer: _Scorer, spec: _Spec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selection, then which slots stop and the candidate each one reports.

    ``success="best"``: a slot succeeds when its best member (lowest fitness) fools, and
    reports the best member (scipy's ``callback`` on ``xk`` in torchattacks).
    ``success="any"``: it succeeds as soon as any evaluated child fools, and reports the
    fooling child of lowest fitness. Successes found under bf16 or another scoring backend
    are confirmed in eager float32.
    """
    s_n = len(slots)
    ar = torch.arange(s_n, device=spec.dev)
    better = cfit < slots.fit
    slots.pop = torch.where(better[..., None], cand, slots.pop)
    slots.fit = torch.where(better, cfit, slots.fit)
    slots.pfool = torch.where(better, cfool, slots.pfool)
    slots.gen = slots.gen + 1
    best = slots.fit.argmin(1)
    if spec.success == "best":
        hit, chosen = slots.pfool[ar, best], slots.pop[ar, best]
    else:
        hit = cfool.any(1)
        win = torch.where(cfool, cfit, torch.full_like(cfit, float("inf"))).argmin(1)
        chosen = torch.where(hit[:, None], cand[ar, win], slots.pop[ar, best])
    if spec.confirm and bool(hit.any()):
        ids = hit.nonzero().flatten()
        logc = scorer.f32(_build(slots.base, ids, chosen[ids], spec.pixels, spec.nhwc))
        hit[ids] = _fools(logc, slots.lab[ids], slots.tgt[ids] if slots.tgt is not None else None, spec.log_thr)
        chosen = torch.where(hit[:, None], chosen, slots.pop[ar, best])
    stop = hit | (slots.gen >= spec.maxiter)
    if spec.tol is not None:
        stop |= slots.fit.std(1, unbiased=False) <= spec.tol * slots.fit.mean(1).abs()
    return stop, chosen


def _finish(
    slots: _Slots, ids: torch.Tensor, chosen: torch.Tensor, scorer: _Scorer, spec: _Spec,
    res: OnePixelResult, labels: torch.Tensor, tgt_all: torch.Tensor | None,
) -> torch.Tensor:
    """Record the final float32 verdict of the slots ``ids``; returns their image positions."""
    ch, h, w = spec.shape
    imgs = _build(slots.base, ids, chosen, spec.pixels, spec.nhwc)
    logc = scorer.f32(imgs).cpu()
    gi = slots.img[ids.cpu()]
    res.x_adv[gi] = imgs.to(res.x_adv.device, res.x_adv.dtype).contiguous()
    px = chosen.view(-1, spec.pixels, 2 + ch).clone()
    px[..., 0] = px[..., 0].floor().clamp(0, h - 1)
    px[..., 1] = px[..., 1].floor().clamp(0, w - 1)
    res.pixel[gi] = px.cpu()
    res.generations[gi] = slots.gen[ids].cpu()
    res.conf_adv[gi] = logc.amax(1).exp()
    res.adv_labels[gi] = logc.argmax(1)
    tg = None if tgt_all is None else tgt_all[gi]
    res.success[gi] = _fools(logc, labels[gi], tg)
    res.outlier[gi] = res.conf_adv[gi] < res.threshold
    return gi


def _run_de(
    model: nn.Module, xf: torch.Tensor, res: OnePixelResult, tgt_all: torch.Tensor | None, spec: _Spec,
    progress: Progress | None, callback: Callable[[OnePixelResult], None] | None,
) -> None:
    """Evolve every image ``res`` does not skip, filling ``res`` in as images finish."""
    fast = None
    if spec.backend != "eager" and bool((~res.skipped).any()):
        from kmtools.scoring_backends import build_scorer

        fast = build_scorer(model, spec.backend, example=xf[:2].to(spec.dev), device=spec.dev, amp=spec.amp)
    scorer = _Scorer(model, fast)
    slots = _Slots(spec, tgt_all is not None, xf.dtype)
    labels, ids_all = res.labels, res.index
    queue = (~res.skipped).nonzero().flatten().tolist()
    total, finished = len(queue), 0
    while queue or len(slots):
        take = queue[: max(0, spec.bs - len(slots))]  # refill free slots
        queue = queue[len(take) :]
        if take:
            ti = torch.tensor(take, dtype=torch.long)
            slots.add(ti, xf[ti].to(spec.dev), ids_all[ti], labels[ti], None if tgt_all is None else tgt_all[ti])
        cand = slots.candidates()
        cfit, cfool = _evaluate(slots, cand, scorer, spec)
        res.evaluations[slots.img] += spec.p
        stop, chosen = _decide(slots, cand, cfit, cfool, scorer, spec)
        if bool(stop.any()):
            ids = stop.nonzero().flatten()
            gi = _finish(slots, ids, chosen[ids], scorer, spec, res, labels, tgt_all)
            slots.keep((~stop).nonzero().flatten())
            finished += int(ids.numel())
            if callback is not None:
                callback(res.take(gi))
        if progress is not None:
            progress(finished, total)


def _check(x: torch.Tensor, y: torch.Tensor, pixels: int, popsize: int, maxiter: int, tol: float | None,
           chunk: int | None, fitness: str, success: str, bounds: str) -> None:
    if x.dim() != 4:
        raise ConfigError(f"the one-pixel attack needs images (N, C, H, W), got shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ConfigError(f"{y.shape[0]} labels for {x.shape[0]} images")
    if pixels < 1:
        raise ConfigError("--pixels must be at least 1")
    if popsize < 4:
        raise ConfigError("--popsize must be at least 4 (DE draws three parents besides the candidate)")
    if maxiter < 0:
        raise ConfigError("--steps must be >= 0")
    if tol is not None and tol < 0:
        raise ConfigError("tol must be >= 0 (or None to disable)")
    if chunk is not None and chunk < 1:
        raise ConfigError("chunk must be at least 1")
    for name, val, allowed in (("--fitness", fitness, FITNESSES), ("--success", success, SUCCESS_RULES),
                               ("--bounds", bounds, BOUNDS)):
        if val not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {val!r}")
    if not x.is_floating_point():
        raise ConfigError(f"images must be floats in [0, 1], got dtype {x.dtype}")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ConfigError("images must be in [0, 1] (pixel space, before normalisation)")


def _targets(target: int | torch.Tensor | Sequence[int] | None, n: int) -> torch.Tensor | None:
    if target is None:
        return None
    if isinstance(target, int):
        return torch.full((n,), int(target), dtype=torch.long)
    t = torch.as_tensor(target, dtype=torch.long).cpu().flatten()
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise ConfigError(f"{t.numel()} targets for {n} images")
    return t


def _union(parts: dict[str, OnePixelResult]) -> OnePixelResult:
    """``fitness="both"``: an image counts as fooled when either fitness fooled it; the
    reported image is the confidence run's unless only the margin run fooled it."""
    a, b = parts["confidence"], parts["margin"]
    use_b = ~a.success & b.success
    merged: dict[str, Any] = {}
    for name in ("success", "adv_labels", "conf_adv", "outlier", "pixel", "x_adv"):
        va, vb = getattr(a, name), getattr(b, name)
        m = use_b.to(va.device).view(-1, *([1] * (va.dim() - 1)))
        merged[name] = torch.where(m, vb, va)
    settings = {**a.settings, "fitness": "both"}
    return replace(
        a, **merged, generations=a.generations + b.generations, evaluations=a.evaluations + b.evaluations,
        settings=settings, seconds=a.seconds + b.seconds,
        success_by={"confidence": a.success.clone(), "margin": b.success.clone()},
        effective_by={k: v.success & ~v.outlier for k, v in parts.items()},
    )


def onepixel(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    pixels: int = 1,
    popsize: int = 400,
    maxiter: int = 100,
    F: float = 0.5,
    target: int | torch.Tensor | Sequence[int] | None = None,
    tol: float | None = None,
    seed: int = 0,
    index: torch.Tensor | Sequence[int] | None = None,
    batch_size: int | None = None,
    chunk: int | None = None,
    amp: bool = True,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    callback: Callable[[OnePixelResult], None] | None = None,
    fitness: str = "confidence",
    success: str = "best",
    bounds: str = "resample",
    adaptive: bool = False,
    threshold: float | None = None,
    backend: str = "eager",
) -> OnePixelResult:
    """One-pixel attack on a batch of images by batched differential evolution.

    Args:
        model: a classifier on images in [0, 1]; a :class:`~kmtools.models.core.KmModel`
            (normalisation inside) or any module returning logits. Run in eval mode.
        x: (N, C, H, W) float images in [0, 1].
        y: (N,) true labels.
        pixels: pixels changed per candidate (1, 3, 5 in Su et al.).
        popsize: candidates per image (Su et al.: 400).
        maxiter: maximum generations after the initial population (Su et al.: 100).
        F: DE mutation scale (Su et al.: 0.5).
        target: class to reach (an int for all images or one per image); ``None``:
            untargeted.
        tol: stop an image when std(fitness) ≤ tol · |mean(fitness)| over its population
            (scipy's rule, default 0.01 there); ``None`` (default) never stops on it,
            like Su et al. and torchattacks (which passes ``atol=-1`` to scipy's solver).
        seed: seeds the counter-based random numbers (see the module docstring).
        index: (N,) the images' ids (default 0..N-1): they key the random numbers and
            appear in the result, so image i is attacked the same way whichever subset it
            is passed with.
        batch_size: images evolved together (default 8192 // popsize on CUDA,
            2048 // popsize on CPU, at least 1).
        chunk: maximum candidate images per forward pass (default: batch_size × popsize).
        amp: bf16 autocast of the backbone on CUDA. A candidate that fools the model
            under bf16 is confirmed in float32 before its image stops.
        device: where to run (the model is moved there); default the model's device.
        progress: ``progress(finished_images, images_to_attack)`` after each generation.
        callback: called with the :class:`OnePixelResult` of the images that just
            finished (first the skipped ones, then per generation the ones that stopped);
            their results are final. With ``fitness="both"`` it is called once, at the end.
        fitness: ``"confidence"`` (Su et al.: the true class's probability, κ_y for a Gauss
            network), ``"margin"`` (log-confidence of the true class minus the best other
            class) or ``"both"`` (both runs; an image is fooled when either fools it, and
            ``success_by`` keeps each run's outcome).
        success: ``"best"`` (default, scipy/torchattacks: the image stops when the best
            member of its population fools, and that member is reported) or ``"any"``
            (stops at the first evaluated child that fools).
        bounds: ``"resample"`` (default, scipy's rule: a child coordinate outside the
            image or the colour range is drawn again uniformly inside it) or ``"clip"``.
        adaptive: detector-aware search for heads that flag outliers: a candidate counts as
            fooling only when its prediction is also at or above the outlier threshold,
            and the fitness adds the shortfall below it (see :func:`_fitness`).
        threshold: the outlier threshold on the predicted class's confidence (default
            the model's own, 1/c unless it sets one); ``outlier`` and ``effective`` use it.
        backend: how candidate batches are scored (:mod:`kmtools.scoring_backends`):
            ``"eager"`` (default), ``"auto"`` (onnxruntime on the CPU when installed),
            ``"channels-last"``, ``"compile"`` or ``"onnxruntime"``. Only the search uses
            it: a success it finds is confirmed, and every reported verdict and confidence
            is computed, in eager float32. Backends round differently, so DE may pick a
            different child where two fitness values tie to float rounding; otherwise the
            search is the same. ``settings`` records the backend and the thread count.

    Returns:
        :class:`OnePixelResult`. ``x_adv`` differs from ``x`` in at most ``pixels`` pixel
        positions and stays in [0, 1].
    """
    _check(x, y, pixels, popsize, maxiter, tol, chunk, fitness, success, bounds)
    if fitness == "both":
        kw: dict[str, Any] = dict(
            pixels=pixels, popsize=popsize, maxiter=maxiter, F=F, target=target, tol=tol, seed=seed,
            index=index, batch_size=batch_size, chunk=chunk, amp=amp, device=device, progress=progress,
            success=success, bounds=bounds, adaptive=adaptive, threshold=threshold, backend=backend,
        )
        merged = _union({k: onepixel(model, x, y, fitness=k, **kw) for k in ("confidence", "margin")})
        if callback is not None:
            callback(merged)
        return merged
    return _single(model, x, y, target=target, index=index, threshold=threshold, adaptive=adaptive,
                   device=device, progress=progress, callback=callback, batch_size=batch_size, chunk=chunk,
                   amp=amp, pixels=pixels, popsize=popsize, maxiter=maxiter, F=F, tol=tol, seed=seed,
                   fitness=fitness, success=success, bounds=bounds, backend=backend)


def _single(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, target: int | torch.Tensor | Sequence[int] | None,
    index: torch.Tensor | Sequence[int] | None, threshold: float | None, adaptive: bool,
    device: str | torch.device | None, progress: Progress | None,
    callback: Callable[[OnePixelResult], None] | None, batch_size: int | None, chunk: int | None, amp: bool,
    pixels: int, popsize: int, maxiter: int, F: float, tol: float | None, seed: int, fitness: str,
    success: str, bounds: str, backend: str = "eager",
) -> OnePixelResult:
    """One fitness: clean verdicts, then the search (see :func:`onepixel`)."""
    t0 = time.perf_counter()
    dev = model_device(model, device)
    n, ch, h, w = x.shape
    bs = batch_size or max(1, (8192 if dev.type == "cuda" else 2048) // popsize)
    labels = y.to(torch.long).cpu()
    ids_all = torch.arange(n) if index is None else torch.as_tensor(index, dtype=torch.long).cpu().flatten()
    if ids_all.numel() != n:
        raise ConfigError(f"{ids_all.numel()} image ids for {n} images")
    tgt_all = _targets(target, n)
    from kmtools.scoring_backends import resolve_backend

    backend = resolve_backend(backend, dev)
    with eval_mode(model), torch.no_grad():
        scorer = _Scorer(model)
        parts = [scorer.f32(x[s : s + 1024].to(dev)).cpu() for s in range(0, n, 1024)]
        logc0 = torch.cat(parts) if parts else torch.zeros(0, 1)
        nc = logc0.shape[1]
        if (labels < 0).any() or (labels >= nc).any():
            raise ConfigError(f"labels must be in [0, {nc}) for this model")
        if tgt_all is not None and ((tgt_all < 0).any() or (tgt_all >= nc).any()):
            raise ConfigError(f"--target must be in [0, {nc}) for this model")
        thr = float(threshold) if threshold is not None else outlier_threshold(model, nc)
        if adaptive and not thr > 0:
            raise ConfigError("the detector-aware attack needs a positive outlier threshold")
        spec = _Spec(
            pixels=pixels, p=int(popsize), maxiter=maxiter, F=F, tol=tol, fitness=fitness, success=success,
            bounds=bounds, log_thr=math.log(thr) if adaptive else None, seed=seed, dev=dev, bs=bs,
            chunk=chunk or bs * int(popsize), amp=_use_amp(dev, amp), nhwc=_use_nhwc(dev), shape=(ch, h, w),
            backend=backend,
        )
        res = _initial_result(x, labels, ids_all, logc0, tgt_all, thr, spec, model)
        if callback is not None and bool(res.skipped.any()):
            callback(res.take(res.skipped.nonzero().flatten()))
        _run_de(model, x, res, tgt_all, spec, progress, callback)
    res.x_adv = res.x_adv.to(x.device)
    res.seconds = time.perf_counter() - t0
    return res




def _initial_result(
    x: torch.Tensor, labels: torch.Tensor, ids_all: torch.Tensor, logc0: torch.Tensor,
    tgt_all: torch.Tensor | None, thr: float, spec: _Spec, model: nn.Module,
) -> OnePixelResult:
    """The result before the search: clean verdicts; skipped images are final."""
    n = x.shape[0]
    ch = spec.shape[0]
    conf0 = logc0.exp()
    pred0 = logc0.argmax(1) if n else torch.zeros(0, dtype=torch.long)
    skipped = pred0 != labels
    if tgt_all is not None:
        skipped |= tgt_all == labels
    top = conf0.amax(1) if n else torch.zeros(0)
    return OnePixelResult(
        index=ids_all,
        labels=labels,
        skipped=skipped,
        success=torch.zeros(n, dtype=torch.bool),
        adv_labels=pred0.clone(),
        preds=pred0,
        conf_clean=top,
        conf_before=conf0.gather(1, labels[:, None])[:, 0] if n else torch.zeros(0),
        conf_adv=top.clone(),
        outlier=top < thr,
        pixel=torch.full((n, spec.pixels, 2 + ch), float("nan")),
        generations=torch.zeros(n, dtype=torch.long),
        evaluations=torch.zeros(n, dtype=torch.long),
        x_adv=x.clone(),
        pixels=spec.pixels,
        popsize=spec.p,
        maxiter=spec.maxiter,
        target=None if tgt_all is None else [int(t) for t in tgt_all],
        threshold=thr,
        head_kind=head_kind_of(model),
        seed=spec.seed,
        settings={
            "F": spec.F, "tol": spec.tol, "batch_size": spec.bs, "chunk": spec.chunk, "amp": spec.amp,
            "device": str(spec.dev), "fitness": spec.fitness, "success": spec.success, "bounds": spec.bounds,
            "adaptive": spec.log_thr is not None, "backend": spec.backend, "threads": torch.get_num_threads(),
        },
    )


def paired(a: OnePixelResult, b: OnePixelResult) -> dict[str, Any]:
    """Paired comparison of two models attacked on the same images (matched by ``index``).

    ``robust``: robust accuracy (correct and not fooled) of ``b`` minus ``a`` over all
    shared images, with Newcombe's interval and McNemar's exact test; ``fooled`` and
    ``effective``: the same for the attack rates, over the images both models attacked
    (both classified correctly), so no image enters one rate and not the other.
    """
    ia = {int(v): i for i, v in enumerate(a.index.tolist())}
    common = [(ia[int(v)], j) for j, v in enumerate(b.index.tolist()) if int(v) in ia]
    if not common:
        raise ConfigError("the two results share no images (compare runs on the same inputs)")
    pa = torch.tensor([c[0] for c in common])
    pb = torch.tensor([c[1] for c in common])
    oa, ob = a.outcomes(), b.outcomes()
    both = oa["attacked"][pa.numpy()] & ob["attacked"][pb.numpy()]
    out: dict[str, Any] = {"images": len(common), "attacked_by_both": int(both.sum())}
    out["robust"] = paired_diff(oa["robust"][pa.numpy()], ob["robust"][pb.numpy()]).to_dict()
    for key in ("fooled", "effective"):
        out[key] = paired_diff(oa[key][pa.numpy()][both], ob[key][pb.numpy()][both]).to_dict()
    return out
