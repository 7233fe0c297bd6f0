"""What every figure of :mod:`kmtools.report.figures` shares: the fixed size and DPI, the
file names the report uses, a fixed colour and label per head kind, the atomic PNG + SVG
writer, the matplotlib style, and drawing an image without axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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


def _rc() -> Any:
    import matplotlib

    return matplotlib.rc_context(_RC)
