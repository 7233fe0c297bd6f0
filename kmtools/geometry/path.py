"""A path between two inputs that stays in their classification region (Sec. III, Alg. 1).

Algorithm 1 (Fawzi et al.): FINDPATH(x1, x2) takes the midpoint x_m = (x1 + x2)/2; if
k̂(x_m) ≠ k̂(x1) it projects x_m onto the region, x_m ← x_m + argmin_r ‖r‖₂ s.t.
k̂(x_m + r) = k̂(x1); the path (x1, x_m, x2) is accepted when points sampled on both
segments are all classified k̂(x1), otherwise FINDPATH recurses on the two halves and
concatenates. The result is a piecewise-linear path given by its anchor points.

kmtools differs in two documented ways: it recurses only into the segments that fail the
check (a valid segment would return at once anyway, with one more anchor), and it stops
at ``max_depth`` (or ``max_anchors``) and reports ``success = False`` — the paper's
recursion need not terminate when the region is not connected.

The projection is a targeted DeepFool step (linearise s_t - s_c for the current top class
c, step onto its zero, repeat), :func:`project_to_class`, applied with factor
(1 + ``overshoot``). Algorithm 1 asks for the minimal r. kmtools moves the midpoint at
least ``min_push`` · ‖b - a‖ (default 0.1 of the segment being split) in the direction of
that r, when the point there is still in the region. Without it the anchors sit on the
boundary with margins that shrink with the segments, and near a kink of a ReLU network's
boundary the straight pieces between them keep leaving the region until ``max_depth``: on
the digits CNN, paths to inputs moved into the region by a targeted perturbation (Sec. III,
scenario 2) were found for 48 of 144 pairs with the minimal projection (overshoot 0.02),
and for all 144 with ``min_push = 0.1`` (path length at most 1.07 × the straight one).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kmtools.errors import ConfigError
from kmtools.models.scoring import decision_scores, eval_mode, model_device

Progress = Callable[[int, int], None]

__all__ = ["PathResult", "find_path", "path_profile", "project_to_class", "same_class_pairs"]


def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def project_to_class(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    overshoot: float = 0.02,
    max_iter: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximately argmin_r ‖r‖₂ s.t. k̂(x + r) = target (Algorithm 1, line 6), batched.

    Each step linearises F = s_c - s_t (c: current top class) and moves onto F = 0; the
    accumulated step is applied with factor (1 + overshoot). Returns ``(x + r, ok)``.
    """
    x0 = x.detach()
    target = target.to(x0.device).long()
    r_tot = torch.zeros_like(x0)
    cur = x0.clone()
    with torch.no_grad():
        ok = decision_scores(model, cur).argmax(1) == target
    for _ in range(max_iter):
        act = (~ok).nonzero().flatten()
        if not act.numel():
            break
        with torch.enable_grad():
            xa = cur[act].clone().requires_grad_(True)
            s = decision_scores(model, xa)
            c = s.argmax(1)
            t = target[act]
            F = s.gather(1, c[:, None]).squeeze(1) - s.gather(1, t[:, None]).squeeze(1)
            (g,) = torch.autograd.grad(F.sum(), xa)
        with torch.no_grad():
            gn2 = g.flatten(1).pow(2).sum(1).clamp_min(1e-30)
            step = -_bview((F.detach() + 1e-4) / gn2, g) * g
            r_tot[act] += step
            cur[act] = x0[act] + (1 + overshoot) * r_tot[act]
            ok[act] = decision_scores(model, cur[act]).argmax(1) == target[act]
    return cur.detach(), ok


@dataclass
class PathResult:
    """A piecewise-linear path between two inputs (Algorithm 1).

    Attributes:
        anchors: (n, ...) anchor points, ``anchors[0] = x1``, ``anchors[-1] = x2``.
        success: every sampled point of every segment is classified ``label``.
        label: k̂(x1) (= k̂(x2) required).
        depth: deepest recursion level reached; projections: midpoints projected;
        evaluations: inputs scored by the region checks (projections not counted);
        straight: the straight segment was valid.
        length: total ℓ₂ length of the path; straight_length: ‖x2 - x1‖.
    """

    anchors: torch.Tensor
    success: bool
    label: int
    depth: int
    projections: int
    evaluations: int
    straight: bool
    length: float
    straight_length: float
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "label": self.label,
            "anchors": int(self.anchors.shape[0]),
            "depth": self.depth,
            "projections": self.projections,
            "evaluations": self.evaluations,
            "straight": self.straight,
            "length": self.length,
            "straight_length": self.straight_length,
            "length_ratio": self.length / self.straight_length if self.straight_length > 0 else None,
            "reason": self.reason,
        }


class _Finder:
    def __init__(self, model: nn.Module, label: int, samples: int, max_depth: int, max_anchors: int,
                 overshoot: float, max_iter: int, min_push: float) -> None:
        self.model, self.label, self.samples = model, label, samples
        self.max_depth, self.max_anchors = max_depth, max_anchors
        self.overshoot, self.max_iter, self.min_push = overshoot, max_iter, min_push
        self.evaluations = self.projections = self.depth = 0
        self.anchors_count = 2
        self.reason = ""

    @torch.no_grad()
    def valid(self, a: torch.Tensor, b: torch.Tensor, samples: int | None = None) -> bool:
        """Line 10: all of ``samples`` (default: the finder's) evenly spaced points of [a, b]
        (ends included) in the region."""
        t = torch.linspace(0, 1, samples or self.samples, dtype=a.dtype, device=a.device)
        pts = a[None] + _bview(t, a[None]) * (b - a)[None]
        self.evaluations += pts.shape[0]
        return bool((decision_scores(self.model, pts).argmax(1) == self.label).all())

    def in_region(self, p: torch.Tensor) -> bool:
        with torch.no_grad():
            self.evaluations += 1
            return bool(decision_scores(self.model, p[None]).argmax(1)[0] == self.label)

    def find(self, a: torch.Tensor, b: torch.Tensor, depth: int) -> tuple[list[torch.Tensor], bool]:
        """Anchors strictly after ``a`` up to and including ``b``, and success."""
        self.depth = max(self.depth, depth)
        if depth > self.max_depth or self.anchors_count >= self.max_anchors:
            self.reason = "max_depth" if depth > self.max_depth else "max_anchors"
            return [b], False
        m = (a + b) / 2
        if not self.in_region(m):  # lines 5-8
            self.projections += 1
            pm, reached = project_to_class(
                self.model, m[None], torch.tensor([self.label], device=m.device),
                overshoot=self.overshoot, max_iter=self.max_iter,
            )
            if not bool(reached[0]):
                self.reason = "projection failed"
                return [m, b], False
            step = pm[0] - m
            need, got = self.min_push * float((b - a).norm()), float(step.norm())
            pushed = m + step * (need / got) if got > 0 else pm[0]
            # at least min_push · |b - a| away from the midpoint: clears kinks at any scale
            m = pushed if 0 < got < need and self.in_region(pushed) else pm[0]
        self.anchors_count += 1
        out: list[torch.Tensor] = []
        success = True
        for lo, hi in ((a, m), (m, b)):  # lines 11-16, recursing only where needed
            if self.valid(lo, hi):
                out.append(hi)
            else:
                sub, ok = self.find(lo, hi, depth + 1)
                out.extend(sub)
                success = success and ok
        return out, success


def find_path(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor,
    *,
    samples: int = 16,
    max_depth: int = 10,
    max_anchors: int = 256,
    overshoot: float = 0.02,
    max_iter: int = 50,
    min_push: float = 0.1,
    verify: int = 2048,
    device: str | torch.device | None = None,
) -> PathResult:
    """Algorithm 1: a path from ``x1`` to ``x2`` inside the region of k̂(x1).

    Args:
        x1, x2: single inputs (shape of one input, no batch dimension), same prediction.
        samples: points checked on each segment (line 10), ends included.
        max_depth: recursion limit; past it the path is reported as failed.
        max_anchors: limit on the number of anchors.
        overshoot, max_iter: of the projection (:func:`project_to_class`).
        min_push: a projected midpoint moves at least ``min_push`` · ‖b - a‖ from the
            midpoint of [a, b] (see the module docstring); 0 is the paper's projection.
        verify: the found path is checked at this many points spread over its length (each
            segment at least ``samples``); a segment that leaves the region there is refined
            by the same recursion, and ``success`` means the path passed this check. 0 keeps
            only the paper's per-segment ``samples`` check.

    Raises:
        ConfigError: the inputs have different shapes or different predictions.
    """
    if x1.shape != x2.shape:
        raise ConfigError(f"path endpoints have different shapes {tuple(x1.shape)} and {tuple(x2.shape)}")
    if samples < 2:
        raise ConfigError("samples must be at least 2 (the segment's ends)")
    dev = model_device(model, device)
    a = (x1 if x1.is_floating_point() else x1.float()).to(dev).detach()
    b = x2.to(dev, a.dtype).detach()
    with eval_mode(model), torch.no_grad():
        pred = decision_scores(model, torch.stack([a, b])).argmax(1)
    if int(pred[0]) != int(pred[1]):
        raise ConfigError(
            f"path endpoints are predicted as different classes ({int(pred[0])} and {int(pred[1])}): "
            "Algorithm 1 needs two inputs of the same region"
        )
    label = int(pred[0])
    fd = _Finder(model, label, samples, max_depth, max_anchors, overshoot, max_iter, min_push)
    with eval_mode(model):
        straight = fd.valid(a, b)
        if straight:
            anchors, ok = [a, b], True
        else:
            rest, ok = fd.find(a, b, 1)
            anchors = [a, *rest]
        for _ in range(max_depth if ok and verify > 0 else 0):
            bad = _leaving_segment(fd, anchors, verify)
            if bad is None:
                break
            sub, ok = fd.find(anchors[bad], anchors[bad + 1], 1)
            anchors = [*anchors[: bad + 1], *sub, *anchors[bad + 2 :]]
            if not ok:
                break
        else:
            if ok and verify > 0 and _leaving_segment(fd, anchors, verify) is not None:
                ok, fd.reason = False, "dense check failed"
    A = torch.stack(anchors).detach()
    seg = (A[1:] - A[:-1]).flatten(1).norm(dim=1)
    return PathResult(
        anchors=A.cpu(), success=bool(ok), label=label, depth=fd.depth, projections=fd.projections,
        evaluations=fd.evaluations, straight=straight, length=float(seg.sum()),
        straight_length=float((b - a).norm()), reason="" if ok else (fd.reason or "segment check failed"),
    )


def _leaving_segment(fd: _Finder, anchors: list[torch.Tensor], verify: int) -> int | None:
    """Index of the first segment with a point outside the region among ``verify`` points spread
    over the path by length (each segment at least ``fd.samples``), or None."""
    lengths = [float((b - a).norm()) for a, b in itertools.pairwise(anchors)]
    total = sum(lengths) or 1.0
    for i, (a, b) in enumerate(itertools.pairwise(anchors)):
        if not fd.valid(a, b, max(fd.samples, math.ceil(verify * lengths[i] / total) + 1)):
            return i
    return None


@torch.no_grad()
def path_profile(
    model: nn.Module,
    anchors: torch.Tensor,
    *,
    points: int = 200,
    confidences: bool = False,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class scores along a path, for plotting (the path's class-score profile).

    Returns ``(s (M,) arc-length position in [0, 1], scores (M, c), anchor_s (n,))``;
    ``confidences=True`` gives the model's confidences (softmax / κ) instead of the
    decision scores.
    """
    dev = model_device(model, device)
    A = anchors.to(dev)
    seg = (A[1:] - A[:-1]).flatten(1).norm(dim=1)
    cum = torch.cat([torch.zeros(1, device=dev, dtype=seg.dtype), seg.cumsum(0)])
    total = float(cum[-1]) if float(cum[-1]) > 0 else 1.0
    s = torch.linspace(0, 1, max(points, 2), device=dev, dtype=A.dtype) * total
    j = torch.searchsorted(cum, s, right=True).clamp(1, A.shape[0] - 1) - 1
    frac = ((s - cum[j]) / seg[j].clamp_min(1e-30)).clamp(0, 1)
    pts = A[j] + _bview(frac, A[j]) * (A[j + 1] - A[j])
    with eval_mode(model):
        conf = getattr(model, "confidences", None)
        scores = conf(pts) if confidences and callable(conf) else decision_scores(model, pts)
    return (s / total).cpu(), scores.float().cpu(), (cum / total).cpu()


def same_class_pairs(predictions: torch.Tensor, count: int, seed: int = 0) -> list[tuple[int, int]]:
    """Up to ``count`` distinct random pairs (i, j), i < j, of inputs with the same prediction
    (Sec. III, scenario 1: "two randomly sampled points ... with the same estimated label")."""
    pred = predictions.cpu().long()
    gen = torch.Generator().manual_seed(seed)
    groups = [(pred == c).nonzero().flatten() for c in pred.unique()]
    groups = [g for g in groups if g.numel() >= 2]
    total = sum(g.numel() * (g.numel() - 1) // 2 for g in groups)
    want = min(int(count), total)
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    while len(out) < want:
        g = groups[int(torch.randint(len(groups), (1,), generator=gen))]
        a, b = (int(v) for v in g[torch.randperm(g.numel(), generator=gen)[:2]])
        pair = (min(a, b), max(a, b))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out
