"""The differential-evolution stages of the one-pixel attack (see :mod:`kmtools.attacks.onepixel`).

- population init (:meth:`_Slots.add`, Su et al.: positions uniform, colours N(128, 127));
- DE generation (:meth:`_Slots.candidates`: DE/rand/1, F, no crossover, resample or clip);
- candidate scoring (:class:`_Scorer`, :func:`_evaluate`, :func:`_fitness`, :func:`_fools`);
- selection and stopping (:func:`_decide`), the float32 verdict of finished images
  (:func:`_finish`) and the loop that refills the batch as images finish (:func:`_run_de`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kmtools.attacks.onepixel_candidates import _VERDICT_BATCH, _build, _distinct_parents, _image_keys, _uniform
from kmtools.attacks.onepixel_result import OnePixelResult
from kmtools.models.scoring import (
    Progress,
    class_log_confidences,
)

# ------------------------------------------------------------------------- attack
FITNESSES = ("confidence", "margin", "both")
SUCCESS_RULES = ("best", "any")
BOUNDS = ("resample", "clip")


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
