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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kmtools import io

SIZE = (6.0, 4.0)
DPI = 100

# File names the report uses for the figures it draws (a run's own figures of the same name
# are then not embedded twice).
NAMES = {
    "confidence": "confidence_hist.png",
    "fgsm": "fgsm.png",
    "prototypes": "prototypes_outliers.png",
    "onepixel_scatter": "onepixel_scatter.png",
    "onepixel_examples": "onepixel_examples.png",
    "tailor": "tailor_curves.png",
    "roc": "detection_roc.png",
    "curvature": "curvature_profile.png",
    "neon": "neon_heatmaps.png",
}

_COLOURS = {"softmax": "#d62728", "gauss": "#1f77b4"}
_CYCLE = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
_LABELS = {"softmax": "softmax network", "gauss": "Gauss network"}
_RC: Any = {
    "svg.hashsalt": "kmtools",
    "font.size": 8.0,
    "axes.titlesize": 9.0,
    "axes.labelsize": 8.0,
}


def model_order(kinds: Sequence[str]) -> list[str]:
    """Head kinds in display order: softmax, gauss, then the rest alphabetically."""
    first = [k for k in ("softmax", "gauss") if k in kinds]
    return first + sorted(k for k in kinds if k not in first)


def colour(kind: str, kinds: Sequence[str] = ()) -> str:
    if kind in _COLOURS:
        return _COLOURS[kind]
    others = [k for k in model_order(list(kinds) or [kind]) if k not in _COLOURS]
    idx = others.index(kind) if kind in others else 0
    return _CYCLE[idx % len(_CYCLE)]


def label(kind: str) -> str:
    return _LABELS.get(kind, f"{kind} network")


def _new_figure() -> Figure:
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str | Path, force: bool, svg: bool = True) -> Path:
    """Write ``fig`` as PNG at ``out`` and (``svg``) SVG beside it, atomically (call inside ``_rc()``)."""
    png = Path(out).with_suffix(".png")
    vector = png.with_suffix(".svg")
    # check both before writing either, so a refusal leaves nothing half-written
    io.check_writable(png, force)
    if svg:
        io.check_writable(vector, force)
    io.write_with(png, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI), force=force)
    if svg:
        fig.set_layout_engine("none")  # keep the positions just computed: no second layout pass
        io.write_with(vector, lambda tmp: fig.savefig(tmp, format="svg", metadata={"Date": None}), force=force)
    return png


def _array(a: Any) -> np.ndarray:
    arr = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
    return arr


def _no_data(ax: Axes, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _style(fig: Figure) -> None:
    for ax in fig.axes:
        ax.tick_params(labelsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)


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


def _to_hwc(img: np.ndarray) -> np.ndarray:
    """(C,H,W) or (H,W) image -> (H,W,3) / (H,W) in [0,1] for imshow."""
    a = np.asarray(img, dtype=float)
    # channel-first when the first axis looks like channels and the last does not (or is smaller)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and (a.shape[-1] not in (1, 3, 4) or a.shape[0] < a.shape[-1]):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo < 0.0 or hi > 1.0:  # normalised or 0-255 input: stretch to [0, 1]
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.clip(a, 0.0, 1.0)


def _show(ax: Axes, img: np.ndarray) -> None:
    a = _to_hwc(img)
    ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


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
# (d) one-pixel attacks: fooled examples and the conf(x) vs conf(x̃) scatter (paper Fig. 1)


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


def _rc() -> Any:
    import matplotlib

    return matplotlib.rc_context(_RC)
