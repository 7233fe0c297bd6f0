"""Geometry figures: principal curvature profiles along the boundary and the detection ROC
(Fawzi et al., "Empirical study of the topology and geometry of deep networks", Fig. 4b and
Algorithm 2). Conventions as in :mod:`kmtools.report.figures`, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kmtools.report.figures_base import (
    _new_figure,
    _no_data,
    _rc,
    _save,
    _style,
    colour,
    label,
    model_order,
)


def curvature_profiles(
    profiles: Mapping[str, Mapping[str, Any]], out: str | Path, *, force: bool = False, svg: bool = True
) -> Path:
    """Average principal curvatures at boundary points near inputs (boundary-geometry Fig. 4b).

    ``profiles`` is ``{name: {"top_mean_profile": [...], "bottom_mean_profile": [...],
    "dim": d}}`` (``CurvatureResult.to_dict()``: top descending, bottom ascending): the k
    largest curvatures on the left, the k smallest on the right at indices d-k .. d-1 (the
    smallest last), one colour per name.
    """
    names = model_order(list(profiles))
    with _rc():
        fig = _new_figure()
        ax = fig.add_subplot(1, 1, 1)
        drawn = False
        for name in names:
            p = profiles[name]
            top = np.array([np.nan if v is None else float(v) for v in p.get("top_mean_profile") or []])
            bot = np.array([np.nan if v is None else float(v) for v in p.get("bottom_mean_profile") or []])
            if top.size + bot.size == 0:
                continue
            dim = int(p.get("dim") or (top.size + bot.size + 1))
            right = bot[::-1]  # ascending (smallest first) -> drawn so the smallest is at d - 1
            xs_top = np.arange(1, top.size + 1)
            first = max(dim - right.size, top.size + 1)
            xs_bot = np.arange(first, first + right.size)
            c = colour(name, names)
            ax.plot(xs_top, top, marker="o", markersize=3, color=c, label=label(name) if name else None)
            ax.plot(xs_bot, right, marker="o", markersize=3, color=c)
            if top.size and right.size:  # the d - 1 - 2k curvatures in between are not computed
                ax.plot([xs_top[-1], xs_bot[0]], [top[-1], right[0]], linestyle=":", color=c, linewidth=1)
            drawn = True
        if not drawn:
            _no_data(ax)
        else:
            ax.axhline(0.0, color="0.5", linewidth=0.8)
            ax.legend(fontsize=7, frameon=False)
        ax.set_xlabel("index i of the principal curvature (1 = largest)")
        ax.set_ylabel("average curvature κ_i")
        ax.set_title("principal curvatures of the decision boundary near the inputs")
        _style(fig)
        return _save(fig, out, force, svg)


def roc_curves(
    curves: Mapping[str, Mapping[str, Any]], out: str | Path, *, force: bool = False, svg: bool = True
) -> Path:
    """ROC-style curves, one per name: ``{"false_positive": [...], "true_positive": [...],
    "auc": float, "point": (fp, tp)}`` (e.g. Algorithm 2 of the boundary-geometry paper, Fig. 8:
    clean inputs declared clean against perturbed inputs declared clean over the threshold)."""
    names = model_order(list(curves))
    with _rc():
        fig = _new_figure()
        ax = fig.add_subplot(1, 1, 1)
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.7", linewidth=0.8)
        drawn = False
        for name in names:
            cv = curves[name]
            fp = np.asarray(cv.get("false_positive") or [], dtype=float)
            tp = np.asarray(cv.get("true_positive") or [], dtype=float)
            if fp.size == 0 or fp.size != tp.size:
                continue
            order = np.argsort(fp, kind="stable")
            auc = cv.get("auc")
            text = label(name) if name else "detector"
            if isinstance(auc, (int, float)):
                text += f" (AUC {float(auc):.3f})"
            c = colour(name, names)
            ax.plot(fp[order], tp[order], color=c, linewidth=1.5, label=text)
            point = cv.get("point")
            if point is not None:
                ax.plot([float(point[0])], [float(point[1])], marker="o", color=c)
            drawn = True
        if not drawn:
            _no_data(ax)
        else:
            ax.legend(fontsize=7, frameon=False, loc="lower right")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positives (perturbed inputs declared clean)")
        ax.set_ylabel("true positives (clean inputs declared clean)")
        ax.set_title("detection over the threshold (dot: t = 0)")
        _style(fig)
        return _save(fig, out, force, svg)


