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

Where the stages live: :mod:`~kmtools.attacks.onepixel_candidates` (the random numbers and
candidate images), :mod:`~kmtools.attacks.onepixel_search` (population init, DE generation,
candidate scoring, selection and the float32 verdict), :mod:`~kmtools.attacks.onepixel_result`
(the result and the paired comparison); this module checks the arguments, decides the clean
verdicts and runs the search per fitness.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

# the stages live in three modules; their names stay importable from here
from kmtools.attacks.onepixel_candidates import _build, _decode, _distinct_parents, _image_keys, _uniform  # noqa: F401
from kmtools.attacks.onepixel_result import OnePixelResult, paired
from kmtools.attacks.onepixel_search import (  # noqa: F401
    BOUNDS,
    FITNESSES,
    SUCCESS_RULES,
    _evaluate,
    _fitness,
    _fools,
    _run_de,
    _Scorer,
    _Slots,
    _Spec,
)
from kmtools.errors import ConfigError
from kmtools.models.scoring import (
    Progress,
    class_confidences,
    eval_mode,
    head_kind_of,
    model_device,
    outlier_threshold,
)

__all__ = ["BOUNDS", "FITNESSES", "SUCCESS_RULES", "OnePixelResult", "class_confidences", "onepixel", "paired"]


def _use_amp(dev: torch.device, amp: bool) -> bool:
    """Search under bf16 autocast (and confirm successes in float32): CUDA only."""
    return bool(amp and dev.type == "cuda")


def _use_nhwc(dev: torch.device) -> bool:
    """Build candidate images channels-last (what cuDNN's bf16 convolutions prefer): CUDA only."""
    return dev.type == "cuda"


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
        tol: stop an image when std ≤ tol · |mean| of its population's fitness (scipy's
            rule); ``None`` (default) never stops on it, like Su et al. and torchattacks.
        seed: seeds the counter-based random numbers (see the module docstring).
        index: (N,) the images' ids (default 0..N-1): they key the random numbers (see
            the module docstring) and appear in the result.
        batch_size: images evolved together (default 8192 // popsize on CUDA,
            2048 // popsize on CPU, at least 1).
        chunk: maximum candidate images per forward pass (default
            :func:`kmtools.scoring_backends.default_chunk`: batch_size × popsize, or whole
            populations up to 512 candidates for eager/channels-last on the CPU).
        amp: bf16 autocast of the backbone on CUDA. A candidate that fools the model
            under bf16 is confirmed in float32 before its image stops.
        device: where to run (the model is moved there); default the model's device.
        progress: ``progress(finished_images, images_to_attack)`` after each generation.
        callback: called with the :class:`OnePixelResult` of the images that just
            finished (first the skipped ones, then per generation the ones that stopped);
            their results are final. With ``fitness="both"`` it is called once, at the end.
        fitness: ``"confidence"`` (Su et al.), ``"margin"`` or ``"both"`` (both runs,
            ``success_by`` keeps each run's outcome); see the module docstring.
        success: ``"best"`` (default) stops an image when the best member of its
            population fools, ``"any"`` at the first evaluated child that fools.
        bounds: ``"resample"`` (default, scipy's rule) or ``"clip"``: what becomes of a
            child coordinate outside the image or the colour range.
        adaptive: detector-aware search for heads that flag outliers: a candidate counts as
            fooling only when its prediction is also at or above the outlier threshold,
            and the fitness adds the shortfall below it (see :func:`_fitness`).
        threshold: the outlier threshold on the predicted class's confidence (default
            the model's own, 1/c unless it sets one); ``outlier`` and ``effective`` use it.
        backend: how candidate batches are scored (:mod:`kmtools.scoring_backends`):
            ``"eager"`` (default), ``"auto"`` (on the CPU onnxruntime when installed and the
            budget N × popsize × (maxiter + 1) is ≥ 50,000 candidates, else channels-last;
            eager on CUDA), ``"channels-last"``, ``"compile"`` or ``"onnxruntime"``. Only
            the search uses it: a success it finds is confirmed, and every reported verdict
            and confidence is computed, in eager float32. Backends round differently, so DE
            may pick a different child where two fitness values tie to float rounding;
            otherwise the search is the same. ``settings`` records the backend and the thread count.

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
    from kmtools.scoring_backends import default_chunk, resolve_backend

    backend = resolve_backend(backend, dev, budget=n * int(popsize) * (maxiter + 1))
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
            chunk=chunk or default_chunk(backend, dev, int(popsize), bs), amp=_use_amp(dev, amp),
            nhwc=_use_nhwc(dev), shape=(ch, h, w), backend=backend,
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
