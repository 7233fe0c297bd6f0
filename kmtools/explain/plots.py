"""Figures for NEON explanations: image heatmaps and per-feature bar charts (matplotlib Agg).

Relevance is shown with a diverging colormap centred at zero (red: evidence for the
cluster, blue: against), its limits symmetric at the largest absolute value, as in the
paper's Figs. 7–8. Files are written atomically (``kmtools.io``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmtools.errors import ConfigError
from kmtools.io import write_with

__all__ = ["feature_bars", "heatmap", "heatmap_grid"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().float().cpu().numpy()
    return np.asarray(t, dtype=np.float32)


def _image(x: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) in [0, 1] → displayable (H, W) grey or (H, W, 3)."""
    if x.ndim == 2:
        return x
    if x.ndim != 3:
        raise ConfigError(f"an image must be (C, H, W), got shape {x.shape}")
    if x.shape[0] == 1:
        return x[0]
    return np.transpose(x[:3], (1, 2, 0))


def _relmap(r: np.ndarray) -> np.ndarray:
    """Pixel relevance: summed over channels, (H, W)."""
    return r.sum(0) if r.ndim == 3 else r


def _draw(ax: Any, image: np.ndarray, rel: np.ndarray, alpha: float, title: str | None) -> Any:
    img = _image(image)
    lim = float(np.abs(rel).max()) or 1.0
    ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    im = ax.imshow(rel, cmap="bwr", vmin=-lim, vmax=lim, alpha=alpha, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return im


def heatmap(
    path: str | Path,
    image: torch.Tensor | np.ndarray,
    relevance: torch.Tensor | np.ndarray,
    *,
    title: str | None = None,
    alpha: float = 0.6,
    force: bool = False,
) -> Path:
    """One PNG: the input (C, H, W) with its relevance (C, H, W) overlaid (channels summed)."""
    plt = _plt()
    img, rel = _np(image), _relmap(_np(relevance))
    fig, axes = plt.subplots(1, 2, figsize=(5.2, 2.6), dpi=120)
    axes[0].imshow(np.clip(_image(img), 0, 1), cmap="gray" if _image(img).ndim == 2 else None)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_title("input", fontsize=8)
    im = _draw(axes[1], img, rel, alpha, title or "relevance")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    fig.tight_layout()
    try:
        return write_with(path, lambda p: fig.savefig(p, format="png"), force=force)
    finally:
        plt.close(fig)


def heatmap_grid(
    path: str | Path,
    images: torch.Tensor | np.ndarray,
    relevance: torch.Tensor | np.ndarray,
    *,
    titles: Sequence[str] | None = None,
    cols: int = 8,
    alpha: float = 0.6,
    force: bool = False,
) -> Path:
    """A grid of overlays, one per input (N, C, H, W), each scaled to its own maximum."""
    plt = _plt()
    imgs, rels = _np(images), _np(relevance)
    n = imgs.shape[0]
    if n == 0:
        raise ConfigError("no images to plot")
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), dpi=120, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _draw(ax, imgs[i], _relmap(rels[i]), alpha, titles[i] if titles else None)
        else:
            ax.axis("off")
    fig.tight_layout()
    try:
        return write_with(path, lambda p: fig.savefig(p, format="png"), force=force)
    finally:
        plt.close(fig)


def feature_bars(
    path: str | Path,
    relevance: torch.Tensor | np.ndarray,
    feature_names: Sequence[str] | None = None,
    *,
    title: str | None = None,
    force: bool = False,
) -> Path:
    """Horizontal bar chart of one tabular explanation (d,), or the mean of several (N, d)."""
    plt = _plt()
    r = _np(relevance)
    if r.ndim == 2:
        r = r.mean(0)
    if r.ndim != 1:
        raise ConfigError("feature_bars needs relevance of shape (d,) or (N, d)")
    names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(r.size)]
    if len(names) != r.size:
        raise ConfigError(f"{len(names)} feature names for {r.size} features")
    order = np.argsort(r)
    fig, ax = plt.subplots(figsize=(5.0, 0.28 * r.size + 1.0), dpi=120)
    colors = ["#c0392b" if v > 0 else "#2e6da4" for v in r[order]]
    ax.barh([names[i] for i in order], r[order], color=colors)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("relevance")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        return write_with(path, lambda p: fig.savefig(p, format="png"), force=force)
    finally:
        plt.close(fig)
