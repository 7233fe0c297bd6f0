"""Matplotlib figures of the Gauss-network paper (Figures 1-3) and of TailorNetwork training.

Every function draws one fixed-size figure (``SIZE`` inches at ``DPI``, i.e. 600×400 px),
writes it atomically as ``out`` (PNG) and, unless ``svg=False``, ``out.with_suffix(".svg")``
(SVG) through :mod:`kmtools.io`, and returns the PNG path. An existing file is only replaced with
``force=True``. Only the Agg canvas is used (no pyplot, no global state), so the functions are
safe on headless machines and in threads.

Models are keyed by their head kind (``"softmax"``, ``"gauss"``, ...); any number of them may be
given, drawn in a fixed order and colour per kind.

References
----------
Hess, Duivesteijn, Mocanu, "Softmax-based Classification is k-means Clustering: Formal Proof,
Consequences for Adversarial Attacks, and Improvement through Centroid Based Tailoring":
Figure 1 (confidence of x vs its one-pixel attack x̃), Figure 2 (FGSM accuracy/confidence
against ε), Figure 3 (prototypes and outliers by Gauss confidence, with κ above each image).

The shared conventions are in :mod:`kmtools.report.figures_base`, the one-pixel figures in
:mod:`kmtools.report.figures_onepixel` and the geometry figures in
:mod:`kmtools.report.figures_geometry`; this module re-exports their names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from kmtools.report.figures_base import (
    _COLOURS,
    _CYCLE,
    _LABELS,
    _RC,
    DPI,
    NAMES,
    SIZE,
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
from kmtools.report.figures_geometry import curvature_profiles, roc_curves
from kmtools.report.figures_onepixel import _changed_pixels, _circle, onepixel_examples, onepixel_scatter

__all__ = [
    "DPI", "NAMES", "SIZE", "_COLOURS", "_CYCLE", "_LABELS", "_RC", "_array", "_changed_pixels", "_circle",
    "_new_figure", "_no_data", "_rc", "_save", "_show", "_style", "_to_hwc", "colour", "confidence_histograms",
    "curvature_profiles", "fgsm_curves", "label", "model_order", "onepixel_examples", "onepixel_scatter",
    "prototypes_outliers", "relevance_heatmaps", "roc_curves", "select_prototypes", "training_curves",
]


# --------------------------------------------------------------------------------------------
# (a) confidence histograms on test data and noise (paper Fig. 1 / Fig. 3 text)


def confidence_histograms(
    test: Mapping[str, Any],
    out: str | Path,
    *,
    noise: Mapping[str, Any] | None = None,
    threshold: float | None = None,
    bins: int = 20,
    force: bool = False,
    svg: bool = True,
) -> Path:
    """Histograms of the predicted-class confidence per model, on test data and on noise.

    Parameters
    ----------
    test:
        ``{head_kind: confidences (N,)}`` on the test set (softmax probability for a softmax
        network, Gauss confidence κ for a Gauss network).
    noise:
        The same on noise images; drawn in a second panel when given.
    threshold:
        The outlier threshold (1/c in the paper), drawn as a dashed line.

    The y axis is the share of inputs per bin, so sets of different size compare directly.
    """
    with _rc():
        fig = _new_figure()
        panels = [("test data", test)]
        if noise:
            panels.append(("noise images", noise))
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        edges = np.linspace(0.0, 1.0, bins + 1)
        kinds = model_order(sorted({*test, *(noise or {})}))
        for ax, (title, confs) in zip(axes, panels, strict=True):
            drawn = False
            for kind in kinds:
                if kind not in confs:
                    continue
                c = _array(confs[kind]).astype(float).ravel()
                c = c[np.isfinite(c)]
                if c.size == 0:
                    continue
                ax.hist(
                    np.clip(c, 0.0, 1.0),
                    bins=edges,
                    weights=np.full(c.size, 1.0 / c.size),
                    histtype="stepfilled",
                    alpha=0.35,
                    color=colour(kind, kinds),
                    edgecolor=colour(kind, kinds),
                    linewidth=1.2,
                    label=f"{label(kind)} (mean {c.mean():.2f})",
                )
                drawn = True
            if not drawn:
                _no_data(ax)
                continue
            if threshold is not None:
                ax.axvline(
                    threshold,
                    color="0.2",
                    linestyle="--",
                    linewidth=1,
                    label=f"outlier threshold {threshold:.3g}",
                )
            ax.set_xlim(0, 1)
            ax.set_title(title)
            ax.set_xlabel("confidence of the predicted class")
            ax.legend(fontsize=6.5, loc="best", frameon=False)
        axes[0].set_ylabel("share of inputs")
        fig.suptitle("confidence of the predicted class", fontsize=9)
        _style(fig)
        return _save(fig, out, force, svg)


# --------------------------------------------------------------------------------------------
# (b) FGSM accuracy and confidence against eps (paper Fig. 2)


def fgsm_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]], out: str | Path, *, force: bool = False, svg: bool = True
) -> Path:
    """Accuracy and confidence under FGSM against ε, one colour per model (paper Fig. 2).

    ``curves`` is ``{head_kind: {"eps": [...], "accuracy": [...], "confidence": [...],
    "confidence_wrong": [...]}}`` (the ``fgsm`` results of ``attack-fgsm``). ``confidence``
    (all predictions, solid) and ``confidence_wrong`` (the misclassified ones, dashed, what the
    paper plots) are optional.
    """
    from matplotlib.lines import Line2D

    with _rc():
        fig = _new_figure()
        ax_acc, ax_conf = fig.subplots(1, 2)
        kinds = model_order(list(curves))
        styles_used: set[str] = set()
        for kind in kinds:
            c = curves[kind]
            eps = _array(c.get("eps", [])).astype(float)
            style = {"color": colour(kind, kinds), "marker": "o", "markersize": 3, "linewidth": 1.4}
            acc = c.get("accuracy")
            if acc is not None and len(acc) == len(eps):
                ax_acc.plot(eps, _array(acc).astype(float), label=label(kind), **style)
            for key, ls in (("confidence", "-"), ("confidence_wrong", "--")):
                vals = c.get(key)
                if vals is not None and len(vals) == len(eps):
                    y = np.array([np.nan if v is None else float(v) for v in vals])
                    ax_conf.plot(eps, y, linestyle=ls, **style)
                    styles_used.add(key)
        for ax, what in ((ax_acc, "accuracy"), (ax_conf, "mean confidence")):
            ax.set_xlabel("ε (FGSM step size)")
            ax.set_ylabel(what)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        if not kinds:
            _no_data(ax_acc)
        else:
            ax_acc.legend(fontsize=7, frameon=False)
        if not styles_used:
            _no_data(ax_conf)
        else:
            handles = []
            if "confidence" in styles_used:
                handles.append(Line2D([], [], color="0.3", linestyle="-", label="all inputs"))
            if "confidence_wrong" in styles_used:
                handles.append(Line2D([], [], color="0.3", linestyle="--", label="misclassified"))
            ax_conf.legend(handles=handles, fontsize=7, frameon=False)
        ax_acc.set_title("accuracy under FGSM")
        ax_conf.set_title("confidence under FGSM")
        _style(fig)
        return _save(fig, out, force, svg)


# --------------------------------------------------------------------------------------------
# (c) prototypes and outliers per class (paper Fig. 3)


def select_prototypes(labels: Any, confidence: Any, per_class: int) -> dict[int, tuple[list[int], list[int]]]:
    """Per class (at most the first ten), the indices of its prototypes and outliers.

    Prototypes are the ``per_class`` inputs of highest confidence, highest first; outliers
    the ``per_class`` of lowest confidence, lowest last (as drawn, the worst at the bottom),
    never repeating a prototype when a class has fewer than ``2 * per_class`` inputs.
    """
    y = _array(labels).astype(int).ravel()
    k = _array(confidence).astype(float).ravel()
    out: dict[int, tuple[list[int], list[int]]] = {}
    for c in sorted(set(y.tolist()))[:10]:
        idx = np.flatnonzero(y == c)
        idx = idx[np.argsort(-k[idx], kind="stable")].tolist()
        top = idx[:per_class]
        bottom = [i for i in idx if i not in top][-per_class:]
        out[c] = (top, bottom)
    return out


def prototypes_outliers(
    images: Any,
    labels: Any,
    confidence: Any,
    out: str | Path,
    *,
    per_class: int = 2,
    classes: Sequence[str] | None = None,
    threshold: float | None = None,
    force: bool = False,
    svg: bool = True,
) -> Path:
    """The most prototypical (top half) and most outlying (bottom half) inputs of each class.

    Parameters
    ----------
    images: (N, C, H, W) or (N, H, W) inputs, any value range (stretched per image for display).
    labels: (N,) class index of each image (the columns).
    confidence: (N,) Gauss confidence κ of each image's class; highest are prototypes, lowest
        outliers. The value is printed above each image, as in the paper's Figure 3; outliers
        below ``threshold`` are printed in red.
    per_class: rows of prototypes and of outliers shown per class.
    """
    x = _array(images)
    y = _array(labels).astype(int).ravel()
    k = _array(confidence).astype(float).ravel()
    if not (len(x) == len(y) == len(k)):
        raise ValueError(f"images ({len(x)}), labels ({len(y)}) and confidence ({len(k)}) differ in length")
    picks = select_prototypes(y, k, per_class)
    cls = list(picks)
    with _rc():
        fig = _new_figure()
        if not cls:
            _no_data(fig.add_subplot(1, 1, 1))
            return _save(fig, out, force, svg)
        rows = 2 * per_class
        grid = fig.add_gridspec(
            rows + 1,
            len(cls) + 1,
            height_ratios=[*([1.0] * per_class), 0.12, *([1.0] * per_class)],
            width_ratios=[0.3, *([1.0] * len(cls))],
        )
        for rows_of, text in (
            (slice(0, per_class), "prototypes"),
            (slice(per_class + 1, rows + 1), "outliers"),
        ):
            side = fig.add_subplot(grid[rows_of, 0])
            side.axis("off")
            side.text(0.5, 0.5, text, rotation=90, ha="center", va="center", fontsize=8, transform=side.transAxes)
        for j0, c in enumerate(cls):
            j = j0 + 1
            top, bottom = picks[c]
            for r in range(per_class):
                for half, chosen, row in (("p", top, r), ("o", bottom, per_class + 1 + r)):
                    ax = fig.add_subplot(grid[row, j])
                    if r < len(chosen):
                        i = chosen[r]
                        _show(ax, x[i])
                        low = threshold is not None and k[i] < threshold
                        ax.set_title(f"{k[i]:.2f}", fontsize=7, pad=1.5, color="#d62728" if low else "black")
                    else:
                        ax.axis("off")
                    if r == 0 and half == "p":
                        name = classes[c] if classes is not None and c < len(classes) else str(c)
                        ax.text(
                            0.5,
                            1.42,
                            name,
                            transform=ax.transAxes,
                            ha="center",
                            va="bottom",
                            fontsize=7,
                            weight="bold",
                        )
        engine: Any = fig.get_layout_engine()
        engine.set(w_pad=0.01, h_pad=0.01, hspace=0.02, wspace=0.02)
        return _save(fig, out, force, svg)


# --------------------------------------------------------------------------------------------
# (f) TailorNetwork training curves

# (panel title, history keys drawn in it); tailor's EpochStats: loss = scatter + ce terms,
# accuracy and mean κ on the training data, centroid_shift = movement of the centroids
_CURVES = (
    ("loss", ("loss", "scatter", "ce", "train_loss")),
    ("accuracy", ("accuracy", "train_accuracy", "val_accuracy", "test_accuracy", "mean_kappa")),
    ("centroid movement", ("centroid_shift", "centroid_movement")),
)


def training_curves(
    history: Sequence[Mapping[str, Any]], out: str | Path, *, force: bool = False, svg: bool = True
) -> Path:
    """Loss, accuracy and centroid movement per epoch of ``tailor`` (its ``results.history``).

    Each history entry is ``{"epoch": int, "loss": float, "accuracy": float,
    "centroid_shift": float, ...}``; panels whose keys are all absent are left out. The loss
    panel also draws its terms ``scatter`` and ``ce``; the accuracy panel every accuracy-like
    key (``accuracy``, ``val_accuracy``, ...) and ``mean_kappa``; centroid movement is drawn
    on a log scale when positive.
    """
    hist = [h for h in history if isinstance(h, Mapping)]
    epochs = np.array([float(h.get("epoch", i + 1)) for i, h in enumerate(hist)])
    panels: list[tuple[str, list[str]]] = []
    for title, candidates in _CURVES:
        present = [k for k in candidates if any(isinstance(h.get(k), (int, float)) for h in hist)]
        if present:
            panels.append((title + (" and mean κ" if "mean_kappa" in present else ""), present))
    with _rc():
        fig = _new_figure()
        if not panels:
            _no_data(fig.add_subplot(1, 1, 1), "no training history")
            return _save(fig, out, force, svg)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, keys) in zip(axes, panels, strict=True):
            positive = True
            for n, key in enumerate(keys):
                vals = np.array([float(h[key]) if isinstance(h.get(key), (int, float)) else np.nan for h in hist])
                positive &= bool(np.nanmin(vals) > 0)
                colour_n = "#1f77b4" if n == 0 else _CYCLE[(n - 1) % len(_CYCLE)]
                ax.plot(epochs, vals, marker="o", markersize=2.5, linewidth=1.3, color=colour_n, label=key)
            if len(keys) > 1:
                ax.legend(fontsize=6, frameon=False)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            finite = [float(h[k]) for h in hist for k in keys if isinstance(h.get(k), (int, float))]
            if title.startswith("centroid") and positive and max(finite) > 10 * min(finite):
                ax.set_yscale("log")  # only when it spans a decade: else the ticks say little
        fig.suptitle("TailorNetwork fine-tuning", fontsize=9)
        _style(fig)
        return _save(fig, out, force, svg)


# --------------------------------------------------------------------------------------------
# (e) NEON heatmaps, boundary curvature and the detection ROC (geometry / explain results)


def relevance_heatmaps(
    images: Any,
    relevance: Any,
    out: str | Path,
    *,
    titles: Sequence[str] | None = None,
    max_examples: int = 6,
    title: str | None = None,
    force: bool = False,
    svg: bool = True,
) -> Path:
    """Inputs (top row) and their NEON pixel relevance (bottom row), red for, blue against.

    ``images`` (N, C, H, W) or (N, H, W); ``relevance`` of the same shape (summed over
    channels) or (N, H, W). The colour scale of each heatmap is symmetric around zero at its
    largest absolute value, as in the NEON paper's Figures 7-8.
    """
    x = _array(images)
    r = _array(relevance).astype(float)
    n = min(len(x), len(r), max_examples)
    with _rc():
        fig = _new_figure()
        if n == 0:
            _no_data(fig.add_subplot(1, 1, 1), "no explanations")
            return _save(fig, out, force, svg)
        axes = fig.subplots(2, n, squeeze=False)
        for j in range(n):
            _show(axes[0, j], x[j])
            if titles is not None and j < len(titles):
                axes[0, j].set_title(str(titles[j]), fontsize=7, pad=2)
            rel = r[j]
            if rel.ndim == 3:
                rel = rel.sum(axis=0) if rel.shape[0] in (1, 3, 4) else rel.sum(axis=-1)
            lim = float(np.nanmax(np.abs(rel))) if rel.size else 0.0
            axes[1, j].imshow(rel, cmap="bwr", vmin=-(lim or 1.0), vmax=lim or 1.0, interpolation="nearest")
            axes[1, j].set_xticks([])
            axes[1, j].set_yticks([])
        axes[0, 0].set_ylabel("input", fontsize=7)
        axes[1, 0].set_ylabel("relevance", fontsize=7)
        fig.suptitle(title or "NEON: pixel relevance for the assigned cluster (red: for, blue: against)", fontsize=8)
        return _save(fig, out, force, svg)


