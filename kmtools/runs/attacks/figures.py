"""``figures/attack-<name>_<key>.png``: up to 8 attacked inputs, each clean image (label,
confidence) above its adversarial image (prediction, confidence; the changed pixels circled, or
with ``diff`` the magnified perturbation r = x̃ − x in a third row)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kmtools.io import write_with


def _show(ax: Any, img: torch.Tensor) -> None:
    a = img.detach().float().cpu()
    if a.dim() == 3:
        a = a.permute(1, 2, 0)
        if a.shape[-1] == 1:
            a = a[..., 0]
    elif a.dim() == 1:
        a = a[None, :]
    ax.imshow(a.clamp(0, 1).numpy(), cmap="gray" if a.dim() == 2 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _circle_changed(ax: Any, x: torch.Tensor, x_adv: torch.Tensor) -> None:
    from matplotlib.patches import Circle

    changed = (x_adv != x).any(0).nonzero().tolist()
    rad = max(0.9, 0.06 * max(x.shape[-2:]))
    for r0, c0 in changed[:10]:
        ax.add_patch(Circle((c0, r0), rad, fill=False, edgecolor="#ff1f1f", linewidth=1.2))


def _diff_row(ax: Any, x: torch.Tensor, x_adv: torch.Tensor) -> None:
    r = (x_adv - x).float()
    m = float(r.abs().max())
    _show(ax, 0.5 + 0.5 * r / m if m > 0 else r + 0.5)
    ax.set_title(f"r ×{0.5 / m:.0f}" if m > 0 else "r = 0", fontsize=7)


def image_grid(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    adv: torch.Tensor,
    conf_before: torch.Tensor,
    conf_adv: torch.Tensor,
    chosen: Sequence[int],
    classes: Sequence[str],
    title: str,
    out: Path,
    force: bool,
    diff: bool = False,
) -> Path:
    """The inputs ``chosen`` (at most 8) of ``x`` above their attacks ``x_adv``, titled with
    class names and confidences; written to ``out`` (PNG, atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def name(c: int) -> str:
        return classes[c] if 0 <= c < len(classes) else str(c)

    idx = list(chosen)[:8]
    rows = 3 if diff else 2
    fig = Figure(figsize=(1.5 * max(len(idx), 1) + 0.4, 1.6 * rows + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    if not idx:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no successful attacks", ha="center", va="center")
        ax.axis("off")
    else:
        axes = fig.subplots(rows, len(idx), squeeze=False)
        for j, i in enumerate(idx):
            _show(axes[0, j], x[i])
            axes[0, j].set_title(f"{name(int(labels[i]))} {float(conf_before[i]):.2f}", fontsize=7)
            _show(axes[1, j], x_adv[i])
            if not diff and x[i].dim() == 3:
                _circle_changed(axes[1, j], x[i], x_adv[i])
            axes[1, j].set_title(f"→ {name(int(adv[i]))} {float(conf_adv[i]):.2f}", fontsize=7)
            if diff:
                _diff_row(axes[2, j], x[i], x_adv[i])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png")

    return write_with(out, writer, force)
