"""Robustness curves: robust accuracy and effective attack success against ε, one line per
model with its 95% Wilson band (the issue's "accuracy against ε under PGD, softmax vs Gauss").

Input is what :meth:`kmtools.attacks.pgd.PGDResult.to_dict` writes (``eps``, ``accuracy``,
``accuracy_lo``/``_hi``, ``effective_rate``, ``effective_rate_lo``/``_hi``), keyed by model, so
the same function draws the curve for ``kmtools attack pgd --plot`` and for ``kmtools report``
from ``attack-pgd.json``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PANELS", "curve_figure", "curve_png_base64", "eps_label", "robustness_curve"]

PANELS: tuple[tuple[str, str], ...] = (
    ("accuracy", "robust accuracy"),
    ("effective_rate", "effective attack success\n(fooled, not flagged)"),
)


def eps_label(e: float, norm: str = "linf") -> str:
    """``8/255`` for ℓ∞ radii that are whole 255ths and print long as decimals, else ``0.05``."""
    k = e * 255
    short = f"{e:g}"
    if norm == "linf" and e > 0 and abs(k - round(k)) < 1e-6 and len(short) > 5:
        return f"{round(k)}/255"
    return short


def _band(vals: Sequence[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in vals]


def curve_figure(summaries: Mapping[str, Mapping[str, Any]], *, title: str = "", norm: str = "linf") -> Any:
    """A matplotlib Figure: one panel per entry of :data:`PANELS` (rate against ε), a line per
    model with markers at the measured ε and a shaded 95% interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS), squeeze=False)[0]
    eps_all: list[float] = []
    for (key, label), ax in zip(PANELS, axes, strict=True):
        for name, d in summaries.items():
            if key not in d or "eps" not in d:
                continue
            order = sorted(range(len(d["eps"])), key=lambda i: float(d["eps"][i]))
            x = [float(d["eps"][i]) for i in order]
            y = [_band(d[key])[i] for i in order]
            lo = [_band(d.get(f"{key}_lo", [None] * len(x)))[i] for i in order]
            hi = [_band(d.get(f"{key}_hi", [None] * len(x)))[i] for i in order]
            (line,) = ax.plot(x, y, marker="o", label=name)
            ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color(), linewidth=0)
            eps_all += x
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(label)
        ax.set_xlabel(f"ε ({norm})")
        ax.grid(alpha=0.3)
    ticks = sorted(set(eps_all))
    for ax in axes:
        if 0 < len(ticks) <= 8:
            ax.set_xticks(ticks)
            ax.set_xticklabels([eps_label(e, norm) for e in ticks], fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def robustness_curve(summaries: Mapping[str, Mapping[str, Any]], path: Path, *, title: str = "",
                     norm: str = "linf", force: bool = False) -> Path:
    """Write :func:`curve_figure` as a PNG to ``path`` (atomically; ``force`` overwrites)."""
    from kmtools.io import write_with

    fig = curve_figure(summaries, title=title, norm=norm)

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png")

    return write_with(Path(path), writer, force)


def curve_png_base64(summaries: Mapping[str, Mapping[str, Any]], *, title: str = "", norm: str = "linf") -> str:
    """The same figure as a base64 PNG, for an HTML report's ``<img src="data:...">``."""
    buf = io.BytesIO()
    curve_figure(summaries, title=title, norm=norm).savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")
