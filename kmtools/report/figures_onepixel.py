"""One-pixel attack figures of the Gauss-network paper (Figure 1): fooled examples with the
changed pixel circled, and conf(x) against conf(x̃) per model. Conventions (size, files,
colours) as in :mod:`kmtools.report.figures`, which re-exports these functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kmtools.report.figures_base import (
    _array,
    _new_figure,
    _no_data,
    _rc,
    _save,
    _show,
    _style,
    _to_hwc,
    colour,
    label,
    model_order,
)


def onepixel_scatter(
    conf_before: Mapping[str, Any],
    conf_adv: Mapping[str, Any],
    out: str | Path,
    *,
    success: Mapping[str, Any] | None = None,
    force: bool = False,
    svg: bool = True,
) -> Path:
    """Confidence of x against that of its successful one-pixel attack x̃, one panel per model.

    As in the paper's Figure 1, confidences are rounded to two decimals and each point's area
    grows with the number of pairs at that position (its size is the square root of the count).
    ``success`` (bool per input) selects the fooled ones; without it all pairs are drawn.
    """
    kinds = model_order([k for k in conf_before if k in conf_adv])
    with _rc():
        fig = _new_figure()
        axes = fig.subplots(1, max(1, len(kinds)), sharey=True, squeeze=False)[0]
        for ax, kind in zip(axes, kinds, strict=False):
            b = _array(conf_before[kind]).astype(float).ravel()
            a = _array(conf_adv[kind]).astype(float).ravel()
            if success is not None and kind in success:
                s = _array(success[kind]).astype(bool).ravel()
                b, a = b[s], a[s]
            ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8, linestyle="--")
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.set_aspect("equal")
            ax.set_xlabel("confidence of x")
            ax.set_title(f"{label(kind)}: {b.size} fooled")
            if b.size == 0:
                ax.text(
                    0.5,
                    0.5,
                    "no successful attacks",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="0.4",
                )
                continue
            counts = Counter(zip(np.round(b, 2).tolist(), np.round(a, 2).tolist(), strict=True))
            pts = np.array(list(counts.keys()))
            n = np.array(list(counts.values()), dtype=float)
            ax.scatter(pts[:, 0], pts[:, 1], s=12.0 * np.sqrt(n), color=colour(kind, kinds), alpha=0.6, linewidths=0)
        if not kinds:
            _no_data(axes[0])
        axes[0].set_ylabel("confidence of attack x̃")
        _style(fig)
        return _save(fig, out, force, svg)


def _changed_pixels(x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
    """(row, col) of every pixel where ``x_adv`` differs from ``x`` (channel-first or 2-D)."""
    d = np.abs(np.asarray(x_adv, dtype=float) - np.asarray(x, dtype=float))
    if d.ndim == 3:
        d = d.sum(axis=0) if d.shape[0] in (1, 3, 4) else d.sum(axis=-1)
    return np.argwhere(d > 1e-6)


def onepixel_examples(
    x: Any,
    x_adv: Any,
    conf_before: Any,
    conf_adv: Any,
    out: str | Path,
    *,
    success: Any = None,
    pixel: Any = None,
    labels: Any = None,
    pred_adv: Any = None,
    classes: Sequence[str] | None = None,
    max_examples: int = 8,
    title: str | None = None,
    force: bool = False,
    svg: bool = True,
) -> Path:
    """Fooled one-pixel examples x̃ with the changed pixel circled, and conf(x) → conf(x̃).

    x, x_adv: (N, C, H, W) (or (N, H, W)). The changed pixels are found as the positions where
    ``x_adv`` differs from ``x``; ``pixel`` (N, P, 5) rows ``(row, col, r, g, b)`` are used
    only when that difference is empty (e.g. a pixel set to its own value).
    """
    xa = _array(x)
    xb = _array(x_adv)
    cb = _array(conf_before).astype(float).ravel()
    ca = _array(conf_adv).astype(float).ravel()
    ok = np.ones(len(xa), dtype=bool) if success is None else _array(success).astype(bool).ravel()
    chosen = np.flatnonzero(ok)
    # most confident fooled predictions first: the interesting ones
    chosen = chosen[np.argsort(-ca[chosen], kind="stable")][:max_examples]
    lab = None if labels is None else _array(labels).astype(int).ravel()
    pa = None if pred_adv is None else _array(pred_adv).astype(int).ravel()
    px = None if pixel is None else _array(pixel)

    def name(c: int) -> str:
        return classes[c] if classes is not None and 0 <= c < len(classes) else str(c)

    with _rc():
        fig = _new_figure()
        if chosen.size == 0:
            _no_data(fig.add_subplot(1, 1, 1), "no successful one-pixel attacks")
            return _save(fig, out, force, svg)
        ncol = min(4, chosen.size)
        nrow = int(np.ceil(chosen.size / ncol))
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
        for ax, i in zip(axes, chosen, strict=False):
            _show(ax, xb[i])
            where = _changed_pixels(xa[i], xb[i])
            if where.size == 0 and px is not None:
                where = np.asarray(px[i])[:, :2].astype(int)
            h, w = _to_hwc(xb[i]).shape[:2]
            radius = max(1.2, 0.06 * max(h, w))
            for r, c in where[:10]:
                ax.add_patch(_circle((float(c), float(r)), radius))
            line = f"{cb[i]:.2f} → {ca[i]:.2f}"
            if lab is not None and pa is not None:
                line = f"{name(lab[i])} → {name(pa[i])}\n{line}"
            ax.set_title(line, fontsize=7, pad=2)
        for ax in axes[chosen.size :]:
            ax.axis("off")
        fig.suptitle(title or "fooled one-pixel attacks: confidence of x → x̃ (changed pixel circled)", fontsize=8)
        return _save(fig, out, force, svg)


def _circle(centre: tuple[float, float], radius: float) -> Any:
    from matplotlib.patches import Circle

    return Circle(centre, radius, fill=False, edgecolor="#ff1f1f", linewidth=1.4, clip_on=False)


