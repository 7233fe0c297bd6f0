"""One-pixel attack (Su, Vargas & Sakurai 2019) by batched differential evolution.

A candidate is ``pixels`` tuples (y, x, c_1, ..., c_C): a pixel position and its new
colour. Differential evolution (DE/rand/1, F = 0.5, no crossover, as in Su et al.) evolves
a population of ``popsize`` candidates per image: child_i = a + F (b - c) from three
random distinct members a, b, c other than i; the child replaces its parent when its
fitness is lower. Every generation of every image in the batch is one forward pass: the
B × P perturbed images are built on the device by gather + scatter (no Python loop over
candidates or pixels), in chunks of at most ``chunk`` images, under bf16 autocast on CUDA.

Fitness (minimised): the confidence of the true class, ``model.confidences(x)[y]``: the
softmax probability for a softmax network and the Gauss-confidence κ_y(x) =
exp(-γ‖f(x) - C_y‖²) for a Gauss network (paper Sec. 5); with ``target`` it is
-confidence of the target class.

Stopping, per image: on success (an evaluated candidate is misclassified, or predicted as
the target), after ``maxiter`` generations, or (``tol``) when the population's fitness
has converged, std ≤ tol · |mean| as in scipy's ``differential_evolution``. Finished
images leave the batch and queued images take their place, so the forward passes stay
full. Images the model already gets wrong are skipped and counted, not attacked.

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

import torch
from torch import nn

from kmtools.attacks.deepfool import Progress, eval_mode, model_device
from kmtools.device import autocast
from kmtools.errors import ConfigError

__all__ = ["OnePixelResult", "class_confidences", "onepixel"]

_M32 = 0xFFFFFFFF
_VERDICT_BATCH = 32
"""Images per float32 verdict forward pass (clean images, final adversarial images)."""


# ----------------------------------------------------------------------------- scoring
def _is_km(model: nn.Module) -> bool:
    return hasattr(model, "features") and isinstance(getattr(model, "head", None), nn.Module)


def class_confidences(model: nn.Module, x: torch.Tensor, *, amp: bool = False) -> torch.Tensor:
    """Per-class confidences (N, classes) in float32: softmax for softmax nets, κ for Gauss nets.

    For a :class:`~kmtools.models.core.KmModel` the backbone runs under bf16 autocast
    (when ``amp`` and on CUDA) and the head in float32, so small differences between
    candidates survive; other modules use ``model.confidences`` when they have it, else the
    softmax of ``model(x)``. No gradients.
    """
    with torch.no_grad(), autocast(x.device, amp):
        if _is_km(model):
            f = model.features(x)  # type: ignore[operator]
            with torch.autocast(device_type=x.device.type, enabled=False):
                head = model.head
                p = next(head.parameters(), None)  # type: ignore[union-attr]
                dtype = p.dtype if p is not None and p.dtype in (torch.float32, torch.float64) else torch.float32
                scores = head(f.to(dtype))  # type: ignore[operator]
                fn = getattr(head, "confidences", None)
                conf = fn(scores) if callable(fn) else torch.softmax(scores.float(), dim=-1)
            return conf.float()  # type: ignore[no-any-return]
        fn = getattr(model, "confidences", None)
        if callable(fn):
            return fn(x).float()  # type: ignore[no-any-return]
        out = model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return torch.softmax(out.float(), dim=-1)


def _threshold(model: nn.Module, num_classes: int) -> float:
    t = getattr(model, "threshold", None)
    if isinstance(t, (int, float)):
        return float(t)
    return 1.0 / max(num_classes, 1)


def _head_kind(model: nn.Module) -> str:
    head = getattr(model, "head", None)
    return str(getattr(head, "kind", "softmax")) if head is not None else "softmax"


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

    def __len__(self) -> int:
        return int(self.labels.shape[0])

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
        N images; ``attacked``, ``skipped``, ``fooled``, ``rate`` = fooled / attacked;
        ``mean_conf_fooled`` (confidence of the fooled predictions); ``outlier_share``
        (share of fooled predictions below ``threshold``). Wall time is kept out of the
        summary (same seed, same summary): see :meth:`throughput`.
        """
        fooled = self.success & ~self.skipped
        att = ~self.skipped
        n = len(self)
        evals = int(self.evaluations.sum())
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
            "fooled": self.fooled,
            "rate": self.rate,
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
        return replace(self, **per_image, target=tgt)

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
        return cls(
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
def _use_amp(dev: torch.device, amp: bool) -> bool:
    """Search under bf16 autocast (and confirm successes in float32): CUDA only."""
    return bool(amp and dev.type == "cuda")


def _use_nhwc(dev: torch.device) -> bool:
    """Build candidate images channels-last (what cuDNN's bf16 convolutions prefer): CUDA only."""
    return dev.type == "cuda"


def _fitness(conf: torch.Tensor, lab: torch.Tensor, tgt: torch.Tensor | None) -> torch.Tensor:
    if tgt is None:
        return conf.gather(1, lab[:, None])[:, 0]
    return -conf.gather(1, tgt[:, None])[:, 0]


def _fools(pred: torch.Tensor, lab: torch.Tensor, tgt: torch.Tensor | None) -> torch.Tensor:
    return pred != lab if tgt is None else pred == tgt


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
            their results are final.

    Returns:
        :class:`OnePixelResult`. ``x_adv`` differs from ``x`` in at most ``pixels`` pixel
        positions and stays in [0, 1].

    Notes:
        Initialisation as Su et al.: positions uniform over the image, colours
        N(128, 127) on the 0..255 scale (here N(0.502, 0.498) on [0, 1]), clipped. A child
        outside the image or the colour range is clamped to it; positions are the floor
        of the continuous parameter.
    """
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
    if not x.is_floating_point():
        raise ConfigError(f"images must be floats in [0, 1], got dtype {x.dtype}")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ConfigError("images must be in [0, 1] (pixel space, before normalisation)")

    t0 = time.perf_counter()
    dev = model_device(model, device)
    n, ch, h, w = x.shape
    p = int(popsize)
    d = pixels * (2 + ch)
    bs = batch_size or max(1, (8192 if dev.type == "cuda" else 2048) // p)
    chunk = chunk or bs * p
    amp_on = _use_amp(dev, amp)
    nhwc = _use_nhwc(dev)
    xf = x
    labels = y.to(torch.long).cpu()
    ids_all = torch.arange(n) if index is None else torch.as_tensor(index, dtype=torch.long).cpu().flatten()
    if ids_all.numel() != n:
        raise ConfigError(f"{ids_all.numel()} image ids for {n} images")

    tgt_all: torch.Tensor | None = None
    if target is not None:
        if isinstance(target, int):
            tgt_all = torch.full((n,), int(target), dtype=torch.long)
        else:
            tgt_all = torch.as_tensor(target, dtype=torch.long).cpu().flatten()
            if tgt_all.numel() == 1:
                tgt_all = tgt_all.expand(n).clone()
            if tgt_all.numel() != n:
                raise ConfigError(f"{tgt_all.numel()} targets for {n} images")

    def score(imgs: torch.Tensor, use_amp: bool) -> torch.Tensor:
        return class_confidences(model, imgs, amp=use_amp)

    def score_f32(imgs: torch.Tensor) -> torch.Tensor:
        """float32 verdicts in forward passes of exactly ``_VERDICT_BATCH`` images (padded), so
        an image's verdict does not depend on how many others are judged with it (kernels
        may round differently for other batch sizes)."""
        parts = []
        for s in range(0, imgs.shape[0], _VERDICT_BATCH):
            part = imgs[s : s + _VERDICT_BATCH]
            k = part.shape[0]
            if k < _VERDICT_BATCH:
                part = torch.cat([part, part[:1].expand(_VERDICT_BATCH - k, *part.shape[1:])])
            parts.append(score(part, False)[:k])
        return torch.cat(parts) if parts else torch.zeros(0, 1, device=imgs.device)

    with eval_mode(model), torch.no_grad():
        # clean predictions (float32)
        parts = [score_f32(xf[s : s + 1024].to(dev)).cpu() for s in range(0, n, 1024)]
        conf0 = torch.cat(parts) if parts else torch.zeros(0, 1)
        nc = conf0.shape[1]
        if (labels < 0).any() or (labels >= nc).any():
            raise ConfigError(f"labels must be in [0, {nc}) for this model")
        if tgt_all is not None and ((tgt_all < 0).any() or (tgt_all >= nc).any()):
            raise ConfigError(f"--target must be in [0, {nc}) for this model")
        thr = _threshold(model, nc)
        pred0 = conf0.argmax(1)
        skipped = pred0 != labels
        if tgt_all is not None:
            skipped |= tgt_all == labels

        # per-image results, filled in as images finish (skipped images: the clean verdict)
        res = OnePixelResult(
            index=ids_all,
            labels=labels,
            skipped=skipped,
            success=torch.zeros(n, dtype=torch.bool),
            adv_labels=pred0.clone(),
            preds=pred0,
            conf_clean=conf0.amax(1) if n else torch.zeros(0),
            conf_before=conf0.gather(1, labels[:, None])[:, 0] if n else torch.zeros(0),
            conf_adv=conf0.amax(1) if n else torch.zeros(0),
            outlier=conf0.amax(1) < thr if n else torch.zeros(0, dtype=torch.bool),
            pixel=torch.full((n, pixels, 2 + ch), float("nan")),
            generations=torch.zeros(n, dtype=torch.long),
            evaluations=torch.zeros(n, dtype=torch.long),
            x_adv=xf.clone(),
            pixels=pixels,
            popsize=p,
            maxiter=maxiter,
            target=None if tgt_all is None else [int(t) for t in tgt_all],
            threshold=thr,
            head_kind=_head_kind(model),
            seed=seed,
            settings={
                "F": F, "tol": tol, "batch_size": bs, "chunk": chunk, "amp": amp_on, "device": str(dev)
            },
        )
        if callback is not None and bool(skipped.any()):
            callback(res.take(skipped.nonzero().flatten()))
        queue = (~skipped).nonzero().flatten().tolist()
        total = len(queue)
        finished = 0

        # slot state
        base = torch.empty((0, h, w, ch) if nhwc else (0, ch, h, w), device=dev, dtype=xf.dtype)
        slot_img = torch.empty(0, dtype=torch.long)  # position in x of each slot (CPU)
        keys = torch.empty(0, dtype=torch.long, device=dev)
        lab = torch.empty(0, dtype=torch.long, device=dev)
        tgt: torch.Tensor | None = None if tgt_all is None else torch.empty(0, dtype=torch.long, device=dev)
        pop = torch.empty(0, p, d, device=dev)
        fit = torch.empty(0, p, device=dev)
        gen = torch.empty(0, dtype=torch.long, device=dev)
        lo = torch.zeros(d, device=dev)
        hi_pos = torch.tensor([float(h), float(w)] + [1.0] * ch, device=dev).repeat(pixels)
        is_pos = torch.tensor([True, True] + [False] * ch, device=dev).repeat(pixels)
        hi = torch.where(is_pos, hi_pos - 1e-4, hi_pos)

        while queue or slot_img.numel():
            # refill free slots with queued images (their initial population)
            take = queue[: max(0, bs - slot_img.numel())]
            queue = queue[len(take) :]
            fresh = len(take)
            if fresh:
                ti = torch.tensor(take, dtype=torch.long)
                xi = xf[ti].to(dev)
                base = torch.cat([base, xi.permute(0, 2, 3, 1).contiguous() if nhwc else xi])
                tk = _image_keys(seed, ids_all[ti].to(dev))
                slot_img = torch.cat([slot_img, ti])
                keys = torch.cat([keys, tk])
                lab = torch.cat([lab, labels[ti].to(dev)])
                if tgt is not None and tgt_all is not None:
                    tgt = torch.cat([tgt, tgt_all[ti].to(dev)])
                u = _uniform(tk, 0, 0, (p, pixels, 2 + ch))
                z = _uniform(tk, 0, 2, (p, pixels, ch))
                init = torch.empty(fresh, p, pixels, 2 + ch, device=dev)
                init[..., 0] = u[..., 0] * h
                init[..., 1] = u[..., 1] * w
                # Su et al.: colours ~ N(128, 127) on 0..255 (Box-Muller), clipped
                r = torch.sqrt(-2.0 * torch.log1p(-z.clamp_max(1 - 2**-24)))
                normal = r * torch.cos(2 * math.pi * u[..., 2:])
                init[..., 2:] = (128.0 + 127.0 * normal).clamp(0, 255) / 255.0
                init = init.view(fresh, p, d).clamp(lo, hi)
                pop = torch.cat([pop, init])
                fit = torch.cat([fit, torch.full((fresh, p), float("inf"), device=dev)])
                gen = torch.cat([gen, torch.full((fresh,), -1, dtype=torch.long, device=dev)])
            s_n = slot_img.numel()
            new = gen < 0
            # children: DE/rand/1 without crossover; fresh slots evaluate their initial population
            a, b, c = _distinct_parents(keys, gen + 1, p)
            ar = torch.arange(s_n, device=dev)[:, None]
            child = (pop[ar, a] + F * (pop[ar, b] - pop[ar, c])).clamp(lo, hi)
            cand = torch.where(new[:, None, None], pop, child)

            # one generation of all slots: S × P candidate images, in chunks
            flat = cand.view(s_n * p, d)
            slot = torch.arange(s_n, device=dev).repeat_interleave(p)
            lab_f = lab.repeat_interleave(p)
            tgt_f = tgt.repeat_interleave(p) if tgt is not None else None
            cfit = torch.empty(s_n * p, device=dev)
            cfool = torch.empty(s_n * p, dtype=torch.bool, device=dev)
            for s in range(0, s_n * p, chunk):
                e = min(s + chunk, s_n * p)
                conf = score(_build(base, slot[s:e], flat[s:e], pixels, nhwc), amp_on)
                tt = tgt_f[s:e] if tgt_f is not None else None
                cfit[s:e] = _fitness(conf, lab_f[s:e], tt)
                cfool[s:e] = _fools(conf.argmax(1), lab_f[s:e], tt)
            cfit = cfit.view(s_n, p)
            cfool = cfool.view(s_n, p)
            res.evaluations[slot_img] += p

            better = cfit < fit
            pop = torch.where(better[..., None], cand, pop)
            fit = torch.where(better, cfit, fit)
            gen = gen + 1

            # success: the best fooling child, confirmed in float32 when searching in bf16
            any_fool = cfool.any(1)
            win = torch.where(cfool, cfit, torch.full_like(cfit, float("inf"))).argmin(1)
            win_cand = cand[torch.arange(s_n, device=dev), win]
            done_ok = any_fool.clone()
            if amp_on and bool(any_fool.any()):
                ids = any_fool.nonzero().flatten()
                conf = score_f32(_build(base, ids, win_cand[ids], pixels, nhwc))
                done_ok[ids] = _fools(conf.argmax(1), lab[ids], tgt[ids] if tgt is not None else None)
            stop = done_ok | (gen >= maxiter)
            if tol is not None:
                stop |= fit.std(1, unbiased=False) <= tol * fit.mean(1).abs()
            if bool(stop.any()):
                ids = stop.nonzero().flatten()
                best = torch.where(done_ok[ids], win[ids], fit[ids].argmin(1))
                chosen = torch.where(done_ok[ids, None], win_cand[ids], pop[ids, best])
                imgs = _build(base, ids, chosen, pixels, nhwc)
                conf = score_f32(imgs).cpu()  # the final verdict, float32
                gi = slot_img[ids.cpu()]
                res.x_adv[gi] = imgs.to(res.x_adv.device, res.x_adv.dtype).contiguous()
                px = chosen.view(-1, pixels, 2 + ch).clone()
                px[..., 0] = px[..., 0].floor().clamp(0, h - 1)
                px[..., 1] = px[..., 1].floor().clamp(0, w - 1)
                res.pixel[gi] = px.cpu()
                res.generations[gi] = gen[ids].cpu()
                res.conf_adv[gi] = conf.amax(1)
                res.adv_labels[gi] = conf.argmax(1)
                tg = None if tgt_all is None else tgt_all[gi]
                res.success[gi] = _fools(res.adv_labels[gi], labels[gi], tg)
                res.outlier[gi] = res.conf_adv[gi] < thr
                keep = (~stop).nonzero().flatten()
                base, keys, lab = base[keep], keys[keep], lab[keep]
                slot_img = slot_img[keep.cpu()]
                tgt = tgt[keep] if tgt is not None else None
                pop, fit, gen = pop[keep], fit[keep], gen[keep]
                finished += int(ids.numel())
                if callback is not None:
                    callback(res.take(gi))
            if progress is not None:
                progress(finished, total)

    res.x_adv = res.x_adv.to(x.device)
    res.seconds = time.perf_counter() - t0
    return res
