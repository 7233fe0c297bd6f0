"""``explain``: NEON's feature-adding AUC against its baselines (NEON paper, Algorithm 1,
Table I) before the generic table, and heatmaps from the command's arrays (``inputs``,
``relevance``, ``assignments``: :meth:`kmtools.explain.api.NeonRun.arrays`) when it drew none."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmtools.report import figures
from kmtools.report.collect import Run
from kmtools.report.document import MISSING, Block, Table, dec, get, num
from kmtools.report.views.base import AddFigure, View, register


def _explain_blocks(res: Mapping[str, Any]) -> list[Block]:
    """The feature-adding AUC of NEON and its baselines (NEON paper, Algorithm 1 and Table I)."""
    auc = res.get("auc")
    if not isinstance(auc, Mapping) or not auc:
        return []
    ref = get(res, "reference.auc")
    ref = ref if isinstance(ref, Mapping) else {}
    best = max((k for k in auc if num(auc[k]) is not None), key=lambda k: float(auc[k]), default=None)
    rows = [
        [str(m) + (" (best)" if m == best else ""), dec(v, 2), dec(ref.get(m), 2) if ref else MISSING]
        for m, v in auc.items()
    ]
    cols = ["method", "AUC", str(get(res, "reference.source") or "paper")]
    how = res.get("evaluation") if isinstance(res.get("evaluation"), Mapping) else {}
    text = (
        "Feature-adding AUC (NEON paper, Algorithm 1): features are added in the order of their "
        "relevance and the cluster assignment is re-scored; higher is better"
        + (f" ({how.get('imputation')} imputation, {how.get('repeats')} repeats)." if how else ".")
    )
    return [text, Table(cols if ref else cols[:2], [r if ref else r[:2] for r in rows])]


_SHOWN_ELSEWHERE = {"auc", "reference", "best_method"}


def draw(run: Run, out: Path, force: bool, add: AddFigure, svg: bool = True) -> None:
    """NEON heatmaps: inputs and image-shaped relevance."""
    for cmd in run.family("explain"):
        if run.figures_of(cmd):
            continue  # the command drew its heatmaps itself: those are shown
        arr = run.arrays(cmd)
        rel, img = arr.get("relevance"), arr.get("inputs")
        if rel is None or img is None or rel.ndim < 3 or img.ndim < 3:
            continue
        assign = arr.get("assignments")
        titles = [f"cluster {int(a)}" for a in assign.ravel()] if assign is not None else None
        name = Path(figures.NAMES["neon"])
        p = figures.relevance_heatmaps(
            img, rel, out / f"{name.stem}_{cmd}{name.suffix}", titles=titles, force=force, svg=svg
        )
        add(
            cmd,
            f"NEON explanations ({cmd}): inputs and the relevance of each pixel for the assigned "
            "cluster, red for and blue against (cf. the NEON paper's Figures 7-8).",
            p,
        )


register(View("explain", lead=_explain_blocks, shown_in_lead=frozenset(_SHOWN_ELSEWHERE), figures=draw, order=70))
for _cmd in ("explain-neon", "explain-evaluate"):
    register(View(_cmd, lead=_explain_blocks, shown_in_lead=frozenset(_SHOWN_ELSEWHERE), order=70))
