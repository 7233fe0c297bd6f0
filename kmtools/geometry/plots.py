"""Figures of the geometry commands (matplotlib, Agg canvas; PNG written atomically).

* :func:`plot_curvature_profile`: the average principal-curvature profile at boundary
  points near inputs (Fig. 4b): largest curvatures on the left, smallest on the right.
* :func:`plot_detection_roc`: Algorithm 2's true positives (clean declared clean) against
  false positives (perturbed declared clean) over the threshold t (Fig. 8).
* :func:`plot_path_profile`: class scores along a path found by Algorithm 1.
* :func:`plot_distance`: boundary distances and Theorem 2 bounds beside them.

No global matplotlib state is touched: figures are drawn on an Agg canvas directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from kmtools.geometry.curvature import CurvatureResult
from kmtools.geometry.detect import DetectionEvaluation
from kmtools.io import write_with

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_curvature_profile", "plot_detection_roc", "plot_distance", "plot_path_profile"]


def _figure(w: float = 6.0, h: float = 4.0) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path, force: bool) -> Path:
    fig.tight_layout()
    return write_with(path, lambda tmp: fig.savefig(tmp, format="png"), force)


def plot_curvature_profile(
    result: CurvatureResult | Sequence[tuple[str, CurvatureResult]],
    path: str | Path,
    *,
    title: str | None = None,
    force: bool = False,
) -> Path:
    """Average principal curvatures (Fig. 4b): top-k descending, then bottom-k ascending.

    ``result`` may be one :class:`CurvatureResult` or ``[(name, result), ...]`` to overlay
    several networks. The x axis is the index of the principal curvature, with a break
    between the top and bottom blocks (the d - 1 - 2k middle curvatures are not computed).
    """
    items = [("", result)] if isinstance(result, CurvatureResult) else list(result)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, res in items:
        ok = res._valid()
        top = res.top.float()[ok].nanmean(0).numpy() if bool(ok.any()) else np.zeros(0)
        bot = res.bottom.float()[ok].nanmean(0).numpy()[::-1] if bool(ok.any()) else np.zeros(0)
        k1, k2 = len(top), len(bot)
        xs_top = np.arange(1, k1 + 1)
        xs_bot = np.arange(res.dim - 1 - k2 + 1, res.dim)  # the last indices of the d - 1
        line = ax.plot(xs_top, top, marker="o", ms=3, label=name or None)[0]
        ax.plot(xs_bot, bot, marker="o", ms=3, color=line.get_color())
        if k1 and k2 and xs_bot[0] > xs_top[-1] + 1:
            ax.plot([xs_top[-1], xs_bot[0]], [top[-1], bot[0]], ls=":", color=line.get_color(), lw=1)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("index i of the principal curvature (sorted, 1 = largest)")
    ax.set_ylabel("average κ_i(z)")
    ax.set_title(title or "Principal curvatures at z = x + r(x) (F = s_other − s_own)")
    if any(name for name, _ in items):
        ax.legend()
    return _save(fig, path, force)


def plot_detection_roc(
    evaluation: DetectionEvaluation | Sequence[tuple[str, DetectionEvaluation]],
    path: str | Path,
    *,
    title: str | None = None,
    force: bool = False,
) -> Path:
    """Fig. 8: true positives (clean declared clean) vs false positives (perturbed declared
    clean) over the threshold t of Algorithm 2; the t = 0 operating point is marked."""
    items = [("", evaluation)] if isinstance(evaluation, DetectionEvaluation) else list(evaluation)
    fig = _figure(5.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    for name, ev in items:
        label = f"{name + ': ' if name else ''}AUC {ev.auc:.3f}"
        line = ax.plot(ev.fp, ev.tp, lw=1.6, label=label)[0]
        ax.plot([ev.fp0], [ev.tp0], marker="o", color=line.get_color())
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positives (perturbed inputs declared clean)")
    ax.set_ylabel("true positives (clean inputs declared clean)")
    ax.set_title(title or "Algorithm 2 detection over the threshold t (dot: t = 0)")
    ax.legend(loc="lower right")
    return _save(fig, path, force)


def plot_path_profile(
    positions: torch.Tensor,
    scores: torch.Tensor,
    anchor_positions: torch.Tensor,
    path: str | Path,
    *,
    label: int | None = None,
    class_names: Sequence[str] | None = None,
    max_classes: int = 5,
    title: str | None = None,
    force: bool = False,
) -> Path:
    """Class scores along a path (from :func:`kmtools.geometry.path.path_profile`).

    Shows ``label`` (bold) and the ``max_classes - 1`` other classes that come closest to
    it along the path; anchors are marked with vertical lines.
    """
    s = positions.numpy()
    sc = scores.float().numpy()
    c = sc.shape[1]
    lab = int(label) if label is not None else int(np.bincount(sc.argmax(1), minlength=c).argmax())
    others = [j for j in np.argsort(-sc.max(0)) if j != lab][: max(0, max_classes - 1)]
    names = list(class_names) if class_names else [str(j) for j in range(c)]
    fig = _figure(6.4, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for a in anchor_positions.numpy():
        ax.axvline(float(a), color="0.85", lw=0.8, zorder=0)
    ax.plot(s, sc[:, lab], lw=2.2, color="C0", label=f"{names[lab]} (path class)")
    for n, j in enumerate(others):
        ax.plot(s, sc[:, j], lw=1.0, color=f"C{n + 1}", label=names[j])
    bad = sc.argmax(1) != lab
    if bad.any():
        ax.scatter(s[bad], sc[bad, lab], s=8, color="red", zorder=3, label="outside the region")
    ax.set_xlabel("position along the path (arc length, 0 = x1, 1 = x2; grey: anchors)")
    ax.set_ylabel("decision score")
    ax.set_title(title or "Class scores along the path (Algorithm 1)")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path, force)


def plot_distance(
    distance: torch.Tensor,
    path: str | Path,
    *,
    bounds: dict[str, torch.Tensor] | None = None,
    title: str | None = None,
    force: bool = False,
) -> Path:
    """Histogram of the boundary distances ‖r(x)‖ (Sec. II) and, for Gauss networks,
    Theorem 2's lower bounds per input against the distance (every point must lie on or
    below the diagonal)."""
    d = distance.float().numpy()
    ok = np.isfinite(d)
    panels = 2 if bounds else 1
    fig = _figure(5.0 * panels, 4.0)
    ax = fig.add_subplot(1, panels, 1)
    ax.hist(d[ok], bins=min(30, max(5, int(ok.sum()) // 3)), color="C0", alpha=0.85)
    ax.set_xlabel("distance to the boundary ‖r(x)‖₂ (input units)")
    ax.set_ylabel("inputs")
    ax.set_title(title or f"Boundary distance, {int(ok.sum())} inputs (median {np.median(d[ok]):.3g})"
                 if ok.any() else "Boundary distance (no input converged)")
    if bounds:
        ax2 = fig.add_subplot(1, panels, 2)
        top = float(d[ok].max()) if ok.any() else 1.0
        for n, (name, b) in enumerate(bounds.items()):
            bb = b.float().numpy()
            sel = ok & np.isfinite(bb)
            ax2.scatter(d[sel], bb[sel], s=8, color=f"C{n + 1}", label=name)
        ax2.plot([0, top], [0, top], ls="--", color="0.5", lw=0.8, label="bound = distance")
        ax2.axhline(0, color="0.8", lw=0.8)
        ax2.set_xlabel("DeepFool distance ‖r(x)‖₂")
        ax2.set_ylabel("Theorem 2 lower bound")
        ax2.set_title("Theorem 2 (Gauss network): bound ≤ distance")
        ax2.legend(fontsize=7)
    return _save(fig, path, force)
